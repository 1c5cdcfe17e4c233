"""The papers' tables as runs of this tool; scripts/<table>.sh call this with the table's name.

    NGPU=8 DATA=/path/to/imagenet scripts/resnext_table3.sh   # train every network
    DRY_RUN=1 scripts/resnext_table3.sh                         # build them, print sizes
    python scripts/paper_tables.py gather SAVE_DIR...           # results beside the paper's

The Random Erasing paper's table (scripts/random_erasing_table.sh) has rows of two runs each,
baseline and +RE, on one data set, one process each, each resumable in its own folder.

NGPU (8, 4, 2 or 1) sets the global batch and LR by the Lua READMEs' linear rule (a fixed
number of images per GPU, LR = 0.1 x batch / the recipe's batch); more than one GPU runs
under torchrun. Results land in checkpoints/<table>/<network>/ (metrics.jsonl, model_best.pth);
after each run the best top-1 error is printed beside the paper's."""

import gzip
import json
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
from datasets import table  # noqa: E402
from errors import UsageError  # noqa: E402
from run import plan  # noqa: E402

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
    if table.is_small(arch["dataset"]):
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
        best = latest.scores.best[0] if latest else math.nan
        print(f" * {label}: top-1 error {best:.2f} (paper {paper_error})", flush=True)
    return 0


# The Random Erasing paper (Zhong et al., AAAI 2020), Table 1, as its authors' README gives it:
# label -> (create() arguments but the data set, (baseline, +RE) test error % per data set).
# Their code gives ResNets projection shortcuts (B) and, from depth 44, bottleneck blocks;
# fb.resnet.torch's basic-block ResNets stand in for those (docs/paper-tables.md).
ERASING_DATASETS = ("cifar10", "cifar100", "fashionmnist")  # each row's figures, in order
ERASING_ROWS = {
    "ResNet-20": ({"netType": "resnet", "depth": 20, "shortcutType": "B"},
                  ((7.21, 6.73), (30.84, 29.97), (4.39, 4.02))),
    "ResNet-32": ({"netType": "resnet", "depth": 32, "shortcutType": "B"},
                  ((6.41, 5.66), (28.50, 27.18), (4.16, 3.80))),
    "ResNet-44": ({"netType": "resnet", "depth": 44, "shortcutType": "B"},
                  ((5.53, 5.13), (25.27, 24.29), (4.41, 4.01))),
    "ResNet-56": ({"netType": "resnet", "depth": 56, "shortcutType": "B"},
                  ((5.31, 4.89), (24.82, 23.69), (4.39, 4.13))),
    "ResNet-110": ({"netType": "resnet", "depth": 110, "shortcutType": "B"},
                   ((5.10, 4.61), (23.73, 22.10), (4.40, 4.01))),
    "WRN-28-10": ({"netType": "wrn", "depth": 28, "widenFactor": 10},
                  ((3.80, 3.08), (18.49, 17.73), (4.01, 3.65))),
}  # fmt: skip
ERASING_SETTINGS = {"baseline": ["-randomErasing", "0"], "RE": []}  # RE: the recipe's erasing


def erasing_runs(rows: str) -> list[tuple[str, str]]:
    """(row label, setting) of ROWS: 'ResNet-20' runs both settings, 'ResNet-20:RE' one."""
    wanted = [part.strip() for part in rows.split(",") if part.strip()] or list(ERASING_ROWS)
    runs = []
    for part in wanted:
        label, _, setting = part.partition(":")
        if label not in ERASING_ROWS or setting not in ("", *ERASING_SETTINGS):
            raise UsageError(
                f"ROWS names {part!r}: give rows of {', '.join(ERASING_ROWS)}, each alone or"
                f" with :baseline or :RE"
            )
        runs += [(label, s) for s in ERASING_SETTINGS if setting in ("", s)]
    return runs


def erasing_command(label: str, setting: str, dataset: str, seed: int, save: str) -> list:
    """The main.py command line of one run of the Random Erasing table: the paper's recipe,
    its own folder, resumed from it when it holds a run."""
    arch = ERASING_ROWS[label][0]
    flags = ["-dataset", dataset, "-recipe", "random-erasing", "-manualSeed", str(seed)]
    flags += ["-precision", "auto"]  # bf16 where the GPU or CPU computes it natively
    for name, value in arch.items():
        flags += [f"-{name}", str(value)]
    folder = os.path.join(save, dataset, f"{label}-{setting}-seed{seed}")
    flags += [*ERASING_SETTINGS[setting], "-save", folder, "-resume", folder]
    return [sys.executable, os.path.join(ROOT, "main.py"), *flags]


def erasing_table(environ) -> int:
    """Run (or with DRY_RUN check) the Random Erasing table's runs that ROWS names."""
    dataset = environ.get("DATASET") or "fashionmnist"
    if dataset not in ERASING_DATASETS:
        raise UsageError(f"DATASET must be fashionmnist, cifar10 or cifar100, got {dataset!r}")
    seed, save = int(environ.get("SEED") or 0), environ.get("SAVE") or "checkpoints/random_erasing"
    extra = shlex.split(environ.get("FLAGS", ""))  # e.g. -data DIR, -erasingStyle paper
    lines = [[*erasing_command(*run, dataset, seed, save), *extra]
             for run in erasing_runs(environ.get("ROWS", ""))]  # fmt: skip
    if environ.get("DRY_RUN", "0") not in ("", "0"):
        return check_commands(lines, dataset)
    for line in lines:
        folder = line[line.index("-save") + 1]
        os.makedirs(folder, exist_ok=True)
        print(f"=> {shlex.join(line)}", flush=True)
        done = subprocess.run(line)
        if done.returncode != 0:
            return done.returncode
        print(gathered_rows([folder])[-1], flush=True)
    return 0


def check_commands(lines: list[list[str]], dataset: str) -> int:
    """Parse and check every command as main.py would, build its network on the meta
    device, and print it with its size and the paper's figure."""
    print("| run | params (M) | paper test error (%) | command |\n|---|---|---|---|")
    for line in lines:
        resume = line.index("-resume")  # its folder is made when the run starts
        opts = plan.parse(line[2:resume] + line[resume + 2 :])
        arch = plan.network(opts)
        params, _ = size_of({**arch, "nClasses": None})
        folder = os.path.basename(line[line.index("-save") + 1])
        paper = shown(paper_error(arch, dataset, opts.randomErasing), 2)
        print(f"| {folder} | {params:.2f} | {paper} | `{shlex.join(line[1:])}` |")
    return 0


def paper_error(arch: dict, dataset: str, erasing: float):
    """The Random Erasing paper's figure for this network and setting, or None."""
    if dataset not in ERASING_DATASETS:
        return None
    for row, figures in ERASING_ROWS.values():  # the shortcut aside: fb's A counts too
        if all(arch.get(k) == v for k, v in row.items() if k != "shortcutType"):
            return figures[ERASING_DATASETS.index(dataset)][1 if erasing else 0]
    return None


def parsed(line: str, path: str, number: int) -> dict:
    """One metrics.jsonl line as a record; a line that is not JSON is named in one error."""
    try:
        return json.loads(line)
    except ValueError:
        raise UsageError(f"{path} line {number} is not JSON") from None


def records_of(folder: str) -> list[dict]:
    """The run's metrics.jsonl (or metrics.jsonl.gz, as docs/results keeps them)."""
    for name, opener in (("metrics.jsonl", open), ("metrics.jsonl.gz", gzip.open)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with opener(path, "rt") as handle:
                return [parsed(line, path, number) for number, line in enumerate(handle, 1)
                        if line.strip()]  # fmt: skip
    raise UsageError(f"no metrics.jsonl in {folder} (is it a -save folder of this tool?)")


def run_summary(folder: str) -> dict:
    """What a run folder says of itself: options, per-epoch val errors, time, machines."""
    with open(os.path.join(folder, "opts.json")) as handle:
        options = json.load(handle)
    records = records_of(folder)
    val = {
        r["epoch"]: r["top1"] for r in records if r.get("split") == "val" and r.get("iter") is None
    }
    segments = [r for r in records if r.get("split") == "segment"]
    machines = sorted({f"{s['cpu']} ({s['cores']} cores), {s['device']}, torch {s['torch']}"
                       for s in segments})  # fmt: skip
    return {"options": options, "val": val, "seconds": run_seconds(records), "machines": machines}


def run_seconds(records: list[dict]) -> float:
    """Wall time of the passes: each record's seconds count from its segment's start."""
    total, last = 0.0, 0.0
    for record in records:
        if record.get("split") == "segment":
            total, last = total + last, 0.0
        elif "seconds" in record:
            last = record["seconds"]
    return total + last


def gathered_rows(folders: list[str]) -> list[str]:
    """A markdown table of the runs: the paper's figure, ours at the best and the last
    epoch, the difference, the seed, the machine and the time."""
    lines = [
        "| run | data | paper (best of its epochs) | ours best (epoch) | ours last epoch |"
        " last - paper | epochs | seed | machine | hours |",
        "|---" * 10 + "|",
    ]
    for folder in folders:
        run = run_summary(folder)
        opts, val = run["options"], run["val"]
        paper = paper_error(opts["arch"], opts["dataset"], opts["randomErasing"])
        last_epoch = max(val, default=0)
        best_epoch = min(val, key=val.get, default=None)
        done = f"{last_epoch} of {opts['nEpochs']}" + (
            " (running)" if last_epoch < opts["nEpochs"] else ""
        )
        last = val.get(last_epoch)
        cells = [os.path.basename(os.path.normpath(folder)), opts["dataset"], shown(paper, 2),
                 f"{val[best_epoch]:.2f} ({best_epoch})" if val else "—", shown(last, 2),
                 f"{last - paper:+.2f}" if val and paper is not None else "—", done,
                 str(opts["manualSeed"]), "; ".join(run["machines"]) or "—",
                 f"{run['seconds'] / 3600:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    try:
        if sys.argv[1:2] == ["gather"] and len(sys.argv) > 2:
            print("\n".join(gathered_rows(sys.argv[2:])))
            return 0
        if sys.argv[1:] == ["random_erasing"]:
            return erasing_table(os.environ)
    except (UsageError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(sys.argv) != 2 or sys.argv[1] not in TABLES:
        print(
            f"error: give one table ({', '.join([*TABLES, 'random_erasing'])}) or gather"
            " SAVE_DIR...",
            file=sys.stderr,
        )
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
