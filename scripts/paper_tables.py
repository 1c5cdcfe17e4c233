"""The papers' tables as runs of this tool; scripts/<table>.sh call this with the table's name.

    NGPU=8 DATA=/path/to/imagenet scripts/resnext_table3.sh   # train every network
    DRY_RUN=1 scripts/resnext_table3.sh                         # build them, print sizes

NGPU (8, 4, 2 or 1) sets the global batch and LR by the Lua READMEs' linear rule (a fixed
number of images per GPU, LR = 0.1 x batch / the recipe's batch); more than one GPU runs
under torchrun. Results land in checkpoints/<table>/<network>/ (metrics.jsonl, model_best.pth);
after each run the best top-1 error is printed beside the paper's."""

import math
import os
import shlex
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402 - after the repository root is on the path
import models  # noqa: E402

IMAGENET = {"dataset": "imagenet", "per_gpu": 32, "reference": 256, "flags": []}
FB_IMAGENET = {"dataset": "imagenet", "per_gpu": 64, "reference": 256, "flags": []}
CIFAR = {"dataset": "cifar10", "per_gpu": 16, "reference": 128, "flags": ["-weightDecay", "5e-4"]}
FB_CIFAR = {"dataset": "cifar10", "per_gpu": 64, "reference": 128,
            "flags": ["-nEpochs", "164"]}  # fmt: skip


def resnext(depth, cardinality, width, dataset="imagenet"):
    """create() arguments of a ResNeXt (cardinality 1: its ResNet baseline, same code)."""
    return {
        "netType": "resnext",
        "depth": depth,
        "dataset": dataset,
        "cardinality": cardinality,
        "baseWidth": width,
    }


def resnet(depth, dataset="imagenet", net_type="resnet"):
    return {"netType": net_type, "depth": depth, "dataset": dataset}


# name -> (title, recipe, rows of (label, create() arguments, published params in M or None,
# published GFLOPs or None, the paper's top-1 error in %)). Errors: ResNeXt paper Tables 3,
# 4, 7; ResNeSt paper (100 - its top-1 accuracy); fb.resnet.torch README; ResNet paper
# Table 6. Sizes: ResNeXt paper (Table 1, Table 4
# GFLOPs, Table 7) and README (~44M, ~7.8 GFLOPs for the 101s); ResNet paper Table 6; for
# fb's ImageNet ResNets and ResNeXt-101 64x4d, torchvision's published model sizes.
TABLES = {
    "resnext_table3": ("ResNeXt paper Table 3: ImageNet, 1x complexity", IMAGENET, [
        ("ResNet-50 1x64d", resnext(50, 1, 64), 25.5, 4.1, 23.9),
        ("ResNeXt-50 2x40d", resnext(50, 2, 40), None, None, 23.0),
        ("ResNeXt-50 4x24d", resnext(50, 4, 24), None, None, 22.6),
        ("ResNeXt-50 8x14d", resnext(50, 8, 14), None, None, 22.3),
        ("ResNeXt-50 32x4d", resnext(50, 32, 4), 25.0, 4.2, 22.2),
        ("ResNet-101 1x64d", resnext(101, 1, 64), 44.5, 7.8, 22.0),
        ("ResNeXt-101 2x40d", resnext(101, 2, 40), None, None, 21.7),
        ("ResNeXt-101 4x24d", resnext(101, 4, 24), None, None, 21.4),
        ("ResNeXt-101 8x14d", resnext(101, 8, 14), None, None, 21.3),
        ("ResNeXt-101 32x4d", resnext(101, 32, 4), 44.0, 7.8, 21.2),
    ]),
    "resnext_table4": ("ResNeXt paper Table 4: ImageNet, 2x complexity", IMAGENET, [
        ("ResNet-101 1x64d", resnext(101, 1, 64), 44.5, 7.8, 22.0),
        ("ResNet-200 1x64d", resnet(200, net_type="preresnet"), None, 15.0, 21.7),
        ("ResNet-101 wider 1x100d", resnext(101, 1, 100), None, 15.6, 21.3),
        ("ResNeXt-101 2x64d", resnext(101, 2, 64), None, 15.3, 20.7),
        ("ResNeXt-101 64x4d", resnext(101, 64, 4), 83.5, 15.6, 20.4),
    ]),
    "resnext_table7": ("ResNeXt paper Table 7: CIFAR (top-1 error, CIFAR-10 / CIFAR-100)", CIFAR, [
        ("ResNeXt-29 8x64d CIFAR-10", resnext(29, 8, 64, "cifar10"), 34.4, None, 3.65),
        ("ResNeXt-29 16x64d CIFAR-10", resnext(29, 16, 64, "cifar10"), 68.1, None, 3.58),
        ("ResNeXt-29 8x64d CIFAR-100", resnext(29, 8, 64, "cifar100"), 34.4, None, 17.77),
        ("ResNeXt-29 16x64d CIFAR-100", resnext(29, 16, 64, "cifar100"), 68.1, None, 17.31),
    ]),
    "resnest_table": ("ResNeSt paper: ImageNet at its crop sizes (the Lua's training recipe, not"
                      " the paper's)", IMAGENET, [
        ("ResNeSt-50", resnet(50, net_type="resnest"), 27.5, 5.4, 18.87),
        ("ResNeSt-101", resnet(101, net_type="resnest"), 48.3, None, 17.17),
        ("ResNeSt-200", resnet(200, net_type="resnest"), 70.2, None, 16.16),
        ("ResNeSt-269", resnet(269, net_type="resnest"), 110.9, None, 15.46),
    ]),
    "fb_imagenet": ("fb.resnet.torch ImageNet single-crop errors", FB_IMAGENET, [
        ("ResNet-18", resnet(18), 11.7, 1.8, 30.43),
        ("ResNet-34", resnet(34), 21.8, 3.6, 26.73),
        ("ResNet-50", resnet(50), 25.6, 4.1, 24.01),
        ("ResNet-101", resnet(101), 44.5, 7.8, 22.44),
        ("ResNet-152", resnet(152), 60.2, 11.5, 22.16),
        ("ResNet-200 (pre-activation)", resnet(200, net_type="preresnet"), None, None, 21.66),
    ]),
    "fb_cifar": ("ResNet paper Table 6: CIFAR-10 (fb.resnet.torch recipe)", FB_CIFAR, [
        ("ResNet-20", resnet(20, "cifar10"), 0.27, None, 8.75),
        ("ResNet-32", resnet(32, "cifar10"), 0.46, None, 7.51),
        ("ResNet-44", resnet(44, "cifar10"), 0.66, None, 7.17),
        ("ResNet-56", resnet(56, "cifar10"), 0.85, None, 6.97),
        ("ResNet-110", resnet(110, "cifar10"), 1.7, None, 6.43),
        ("ResNet-1202", resnet(1202, "cifar10"), 19.4, None, 7.93),
    ]),
}  # fmt: skip


# The crop side a network is trained and tested at, where a paper used another than 224
# (sizes are still counted at 224, as the papers count them).
CROP_SIZES = {"ResNeSt-101": 256, "ResNeSt-200": 320, "ResNeSt-269": 416}


def batch_and_lr(recipe: dict, n_gpu: int) -> tuple[int, float]:
    """The Lua READMEs' scaling: recipe images per GPU (up to the recipe's batch), linear LR."""
    batch = min(recipe["per_gpu"] * n_gpu, recipe["reference"])
    return batch, 0.1 * batch / recipe["reference"]


def command(table: str, label: str, arch: dict, recipe: dict, n_gpu: int, data: str) -> list:
    """The main.py command line of one network of a table."""
    batch, lr = batch_and_lr(recipe, n_gpu)
    launcher = [sys.executable]
    if n_gpu > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_gpu}"]
    flags = ["-dataset", arch["dataset"], "-netType", arch["netType"], "-depth", str(arch["depth"])]
    if arch["netType"] == "resnext":
        flags += ["-cardinality", str(arch["cardinality"]), "-baseWidth", str(arch["baseWidth"])]
    flags += ["-batchSize", str(batch), "-LR", f"{lr:g}", *recipe["flags"]]
    if label in CROP_SIZES:
        flags += ["-cropSize", str(CROP_SIZES[label])]
    flags += ["-save", os.path.join("checkpoints", table, label.replace(" ", "_"))]
    if data:
        flags += ["-data", data]
    return [*launcher, os.path.join(ROOT, "main.py"), *flags]


def size_of(arch: dict) -> tuple[float, float | None]:
    """(parameters in M, GFLOPs = GMACs at the data set's size) built on the meta device."""
    with torch.device("meta"):
        model = models.create(**arch)
    if models.is_cifar_shaped(arch["dataset"]):
        return sum(p.numel() for p in model.parameters()) / 1e6, None
    params, macs = models.complexity(model, 224)
    return params / 1e6, macs / 1e9


def shown(value, digits: int | None = None) -> str:
    """A table cell: a dash for no value; a published figure as published (its precision)."""
    if value is None:
        return "—"
    return f"{value:g}" if digits is None else f"{value:.{digits}f}"


def dry_run(table: str) -> None:
    """Build every network of the table; print its size beside the paper's."""
    title, _, rows = TABLES[table]
    print(
        f"{title}\n| network | params (M) | published params (M) | GFLOPs | published GFLOPs |"
        " paper top-1 error (%) |\n|---|---|---|---|---|---|"
    )
    for label, arch, paper_params, paper_flops, paper_error in rows:
        params, flops = size_of(arch)
        print(
            f"| {label} | {params:.2f} | {shown(paper_params)} | {shown(flops, 2)} |"
            f" {shown(paper_flops)} | {paper_error} |"
        )


def train(table: str, n_gpu: int, data: str) -> int:
    """Run every network of the table in turn; print each best error beside the paper's."""
    title, recipe, rows = TABLES[table]
    if recipe["dataset"] == "imagenet" and not data:
        print("error: set DATA to the ImageNet folder (train/ and val/ inside)", file=sys.stderr)
        return 2
    print(f"{title}: {len(rows)} runs on {n_gpu} GPU(s), results in checkpoints/{table}/")
    for label, arch, _, _, paper_error in rows:
        line = command(table, label, arch, recipe, n_gpu, data)
        print(f"=> {label}: {shlex.join(line)}", flush=True)
        done = subprocess.run(line)
        if done.returncode != 0:
            return done.returncode
        latest = checkpoints.latest(line[line.index("-save") + 1])
        best = latest.best[0] if latest else math.nan
        print(f" * {label}: top-1 error {best:.2f} (paper {paper_error})", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in TABLES:
        print(f"error: give one table: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    table = sys.argv[1]
    if os.environ.get("DRY_RUN", "0") not in ("", "0"):
        dry_run(table)
        return 0
    n_gpu = os.environ.get("NGPU", "8")
    if n_gpu not in ("1", "2", "4", "8"):
        print(f"error: NGPU must be 8, 4, 2 or 1, got {n_gpu}", file=sys.stderr)
        return 2
    return train(table, int(n_gpu), os.environ.get("DATA", ""))


if __name__ == "__main__":
    sys.exit(main())
