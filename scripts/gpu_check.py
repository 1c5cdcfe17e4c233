"""The GPU proof: every CUDA path of this tool run once, and how fast, on one GPU in under 8
minutes; --dry-run runs the same checks on the CPU at tiny sizes (CI runs it).

  bash scripts/gpu_check.sh [--dry-run] OUT

One PASS / FAIL / SKIP line per check, then OUT/summary.json and OUT/summary.md. It needs
the installed torch (2.11 or later) and torchvision only (timm and TorchCodec are used where
installed), no venv and no network: the data it trains on it writes itself, a CIFAR-10-format
folder of random images and a small JPEG folder (with greyscale and CMYK files).
"""

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402 - after the repository root is on the path
import models  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402 - the bare loop and the trainer as the benchmark times them

MAIN = os.path.join(ROOT, "main.py")


@dataclass(frozen=True)
class Sizes:
    """How big each check is: the GPU run's, or the CPU dry run's."""

    device: str
    cifar_per_batch: int  # images in each of the 5 training batch files
    jpegs_per_class: int
    jpeg_side: int
    crop: int
    batch: int
    workers: int
    speed_batch: int
    speed_size: int
    speed_steps: int
    seconds: int  # time limit of one check
    epochs: int = 4  # of each training check
    # -compile's check: on a CPU, inductor builds C++ kernels (2 minutes on a 2-core Zen 3)
    compile_seconds: int = 300
    speed_models: tuple[str, ...] = ("ResNet-50", "ResNeXt-50 32x4d")


GPU = Sizes("cuda", 64, 96, 256, 224, 32, 16, 256, 224, 20, 150)
# The rehearsal proves each check's code path, not its figures: two epochs show a loss
# falling, one network the speed comparison.
DRY = Sizes("cpu", 8, 6, 48, 32, 8, 2, 4, 32, 2, 90, epochs=2, speed_models=("ResNet-50",))


@dataclass
class Report:
    """The checks' lines, as they are printed and summarised."""

    rows: list = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, **figures) -> None:
        self.rows.append({"check": name, "status": status, "detail": detail, **figures})
        print(f"{status:4}  {name}: {detail}", flush=True)


class CheckTimeout(Exception):
    """A check ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """SIGALRM ends the block with CheckTimeout after seconds."""

    def expired(*_):
        raise CheckTimeout(f"ran past its {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_check(report: Report, name: str, check, seconds: int) -> None:
    """check() -> (status, detail, figures), reported; an exception is a FAIL naming it."""
    began = time.monotonic()
    try:
        with time_limit(seconds):
            status, detail, figures = check()
    except Exception as exc:  # noqa: BLE001 - every failure is a line of the report
        status, detail, figures = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0], {}
    report.add(name, status, detail, seconds=round(time.monotonic() - began, 1), **figures)


# The data


def noisy(rng, colours: np.ndarray, side: int) -> np.ndarray:
    """N x side x 4/3 side x 3 uint8 images, each in its row's colour plus noise: a task a
    network learns in a few epochs, unlike random labels."""
    shape = (len(colours), side, side * 4 // 3 if side > 32 else side, 3)
    noise = rng.integers(-60, 61, shape)
    return np.clip(colours[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_cifar(folder: str, per_batch: int) -> str:
    """A CIFAR-10 python-format folder of noisy images, each class its own colour."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (10, 3))
    root = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        planes = noisy(rng, palette[labels], 32).transpose(0, 3, 1, 2)  # CIFAR's planar rows
        return {b"data": planes.reshape(n, 3072), b"labels": labels.tolist()}

    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", 32)]:
        with open(os.path.join(root, name), "wb") as handle:
            pickle.dump(batch(n), handle, protocol=2)
    with open(os.path.join(root, "batches.meta"), "wb") as handle:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, handle)
    return folder


def write_jpegs(folder: str, per_class: int, side: int) -> str:
    """train/ and val/ with two classes of noisy JPEGs, reddish and bluish; one greyscale
    and one CMYK file in each."""
    rng = np.random.default_rng(1)
    colours = {"cat": np.array([[200, 60, 60]]), "dog": np.array([[60, 60, 200]])}
    for split in ("train", "val"):
        for label, colour in colours.items():
            os.makedirs(os.path.join(folder, split, label), exist_ok=True)
            for i in range(per_class):
                image = Image.fromarray(noisy(rng, colour, side)[0])
                image = {0: image.convert("L"), 1: image.convert("CMYK")}.get(i, image)
                image.save(os.path.join(folder, split, label, f"{i}.jpg"), quality=90)
    return folder


# Running the tool


@dataclass(frozen=True)
class Tool:
    """How this check run calls main.py: its device, sizes and data."""

    sizes: Sizes
    work: str
    cifar: str
    jpegs: str

    def cifar_args(self, name: str, *flags: str) -> list[str]:
        """ResNet-20 on the CIFAR folder, saving in work/name."""
        return ["-dataset", "cifar10", "-netType", "resnet", "-depth", "20", "-data", self.cifar,
                "-batchSize", str(self.sizes.batch), "-LR", "0.01", "-nThreads", "0",
                "-tensorboard", "false", "-device", self.sizes.device, "-save", self.save(name),
                "-printFreq", "1", *flags]  # fmt: skip

    def jpeg_args(self, name: str, depth: int, *flags: str) -> list[str]:
        """ResNet-depth on the JPEG folder, saving in work/name."""
        s = self.sizes
        return ["-dataset", "imagenet", "-netType", "resnet", "-depth", str(depth),
                "-data", self.jpegs, "-cropSize", str(s.crop), "-batchSize", str(s.batch),
                "-nThreads", str(s.workers), "-tensorboard", "false", "-device", s.device,
                "-save", self.save(name), "-gen", self.save(name + "-gen"), *flags]  # fmt: skip

    def save(self, name: str) -> str:
        return os.path.join(self.work, name)


def run_ok(argv: list[str]) -> str:
    """python main.py argv, as a user runs it, which must succeed; its stdout."""
    done = subprocess.run([sys.executable, MAIN, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        raise RuntimeError(f"exit {done.returncode}: {last}")
    return done.stdout


def training_records(save: str, per_step: bool) -> list[dict]:
    """The training records of metrics.jsonl: one per printed step, or one per epoch."""
    with open(os.path.join(save, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [r for r in records if (r["iter"] is not None) == per_step and r["split"] == "train"]


def weights(path: str) -> dict:
    return checkpoints.load_model_file(path).weights


def bitwise_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# The checks


def environment(sizes: Sizes) -> tuple:
    """What ran the checks: the device, torch, CUDA, cuDNN, the tool's commit."""
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    facts = {"torch": torch.__version__, "python": platform.python_version(), "commit": commit}
    if sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "driver": nvidia_smi("driver_version")}  # fmt: skip
    else:
        facts |= {"cpu": platform.processor() or platform.machine(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
    return "PASS", ", ".join(f"{k} {v}" for k, v in facts.items()), facts


def nvidia_smi(field_name: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)  # fmt: skip
        return done.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def trains(tool: Tool, name: str, argv: list[str], must_decrease: bool = True) -> tuple:
    """The run ends well and its training loss is finite and (must_decrease) lower in its
    last epoch than in its first."""
    run_ok(argv)
    losses = [r["loss"] for r in training_records(tool.save(name), per_step=False)]
    if not all(math.isfinite(loss) for loss in losses):
        return "FAIL", f"loss not finite: {losses}", {}
    status = "PASS" if losses[-1] < losses[0] or not must_decrease else "FAIL"
    said = "loss by epoch " + " ".join(f"{x:.3f}" for x in losses)
    return status, said + ("" if must_decrease else " (finite)"), {"losses": losses}


def deterministic_twice(tool: Tool) -> tuple:
    """-cudnn deterministic twice: bitwise equal weights."""
    runs = []
    for name in ("det-a", "det-b"):
        run_ok(tool.cifar_args(name, "-nEpochs", "1", "-cudnn", "deterministic"))
        runs.append(weights(os.path.join(tool.save(name), "model_1.pth")))
    same = bitwise_equal(*runs)
    return ("PASS" if same else "FAIL"), f"weights bitwise {'equal' if same else 'different'}", {}


def killed_and_resumed(tool: Tool) -> tuple:
    """SIGKILL while writing a mid-epoch checkpoint, resume: bitwise the uninterrupted run
    (the CUDA generators restored)."""
    flags = ["-nEpochs", "2", "-checkpointEvery", "2", "-cudnn", "deterministic"]
    run_ok(tool.cifar_args("whole", *flags))
    killed = tool.cifar_args("killed", *flags)
    env = {**os.environ, checkpoints.KILL_BEFORE_RENAME: "model_2_iter2.pth"}
    done = subprocess.run([sys.executable, MAIN, *killed], env=env, capture_output=True,
                          timeout=tool.sizes.seconds)  # fmt: skip
    if done.returncode != -signal.SIGKILL:
        return "FAIL", f"the killed run ended with {done.returncode}", {}
    run_ok([*killed, "-resume", tool.save("killed")])
    same = bitwise_equal(*(weights(os.path.join(tool.save(n), "model_2.pth"))
                           for n in ("whole", "killed")))  # fmt: skip
    return (
        ("PASS" if same else "FAIL"),
        f"resumed weights bitwise {'equal' if same else 'different'}",
        {},
    )


def sigterm_saves(tool: Tool) -> tuple:
    """SIGTERM at iteration 2 of epoch 1: exit 143 within seconds, a checkpoint there."""
    argv = tool.cifar_args("sigterm", "-nEpochs", "2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, MAIN, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    for line in process.stdout:
        if line.startswith(" | Epoch: [1][2/"):
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            break
    process.stdout.read()
    status = process.wait(timeout=60)
    seconds = time.monotonic() - sent
    found = checkpoints.latest(tool.save("sigterm"))
    good = status == 128 + signal.SIGTERM and found is not None and seconds < 10
    where = f"epoch {found.epoch} iteration {found.iteration}" if found else "no checkpoint"
    return ("PASS" if good else "FAIL"), f"exit {status} after {seconds:.1f} s, saved {where}", {}


def distributed(tool: Tool) -> tuple:
    """torchrun (nccl on one GPU; gloo with 2 processes on the CPU) with -syncBN; its last
    validation equals a single-process -testOnly of the saved model."""
    ranks = 1 if tool.sizes.device == "cuda" else 2
    argv = tool.cifar_args("torchrun", "-nEpochs", "1", "-syncBN", "true")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks), MAIN, *argv]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=tool.sizes.seconds)
    if done.returncode != 0:
        return "FAIL", f"torchrun exit {done.returncode}: {done.stderr.strip()[-200:]}", {}
    alone = run_ok([*argv, "-testOnly", "true", "-resume", tool.save("torchrun")])
    finished = [line for line in done.stdout.splitlines() if line.startswith(" * Finished")]
    tested = [line for line in alone.splitlines() if line.startswith(" * Results")]
    same = errors_of(finished[-1]) == errors_of(tested[-1])
    return ("PASS" if same else "FAIL"), f"{ranks} process(es); {tested[-1].strip()}", {}


def errors_of(line: str) -> tuple[float, ...]:
    """(top1, top5) of a ' * Finished' or ' * Results' line."""
    return tuple(float(x) for x in re.findall(r"top[15]:\s+([\d.]+)", line))


def jpeg_folder(tool: Tool, decode_on_device: bool) -> tuple:
    """The JPEG folder with loader workers (pinned memory on CUDA), or decoded on the device."""
    if decode_on_device:
        try:
            import torchcodec  # noqa: F401
        except ImportError:
            return "SKIP", "TorchCodec not installed", {}
    name = "jpeg-device" if decode_on_device else "jpeg"
    flags = ["-nEpochs", "1", "-decodeOnDevice", str(decode_on_device).lower()]
    run_ok(tool.jpeg_args(name, 18, *flags))
    records = training_records(tool.save(name), per_step=True)
    speed = statistics.median(r["img_s"] for r in records)
    detail = f"{speed:.0f} img/s, median step (greyscale and CMYK JPEGs included)"
    if decode_on_device:
        return "PASS", detail, {"img_s": speed}
    s = tool.sizes
    synthetic = trainer_img_s("ResNet-18", "fp32", s, batch=s.batch, side=s.crop)
    ratio = speed / synthetic
    detail += f"; {ratio:.2f}x the same training on in-memory synthetic data"
    return "PASS", detail, {"img_s": speed, "synthetic_img_s": synthetic, "ratio": ratio}


def optnet_memory(tool: Tool) -> tuple:
    """Peak memory of a ResNet-50 training step with and without -optnet."""
    s = tool.sizes
    peaks = {}
    for optnet in (False, True):
        model = models.create("resnet", 50, "imagenet").to(s.device)
        models.set_activation_checkpointing(model, optnet)
        if s.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        images = torch.randn(s.batch, 3, s.crop, s.crop, device=s.device)
        model(images).sum().backward()
        if s.device == "cuda":
            peaks[optnet] = torch.cuda.max_memory_allocated() / 2**20
        del model, images
    if not peaks:
        return "SKIP", "both steps ran; peak memory is measured on CUDA only", {}
    cut = 1 - peaks[True] / peaks[False]
    return (
        "PASS",
        f"peak {peaks[True]:.0f} / {peaks[False]:.0f} MiB, a {cut:.0%} cut",
        {"peak_mib": peaks},
    )


# Speed


OTHER_MODELS = {"ResNet-18": ("resnet", 18, {})}  # the JPEG check's
SPEED_MODELS = {
    "ResNet-50": ("resnet", 50, {}),
    "ResNeXt-50 32x4d": ("resnext", 50, {"cardinality": 32, "baseWidth": 4}),
}
PRECISIONS = {"bf16 channels_last": "bf16", "fp32 channels_last": "fp32"}  # benchmark.py's


def network(name: str) -> torch.nn.Module:
    net_type, depth, options = {**SPEED_MODELS, **OTHER_MODELS}[name]
    torch.manual_seed(0)
    return models.create(net_type, depth, "imagenet", **options)


def bare_img_s(name: str, precision: str, sizes: Sizes) -> float:
    """img/s of scripts/benchmark.py's bare loop: the model, SGD, tensors on the device."""
    batch, side = sizes.speed_batch, sizes.speed_size
    seconds = benchmark.measure_bare(network(name), side, batch, "channels_last", precision,
                                     3, sizes.speed_steps, device=sizes.device)  # fmt: skip
    return batch / seconds


def trainer_img_s(name: str, precision: str, sizes: Sizes, batch=None, side=None) -> float:
    """img/s of this tool's Trainer on its in-memory loader, as scripts/benchmark.py
    measures it (augmentation on the device)."""
    batch, side = batch or sizes.speed_batch, side or sizes.speed_size
    seconds = benchmark.measure_trainer(network(name), side, batch, "channels_last", precision,
                                        3, sizes.speed_steps, device=sizes.device)  # fmt: skip
    return batch / seconds


def speed(sizes: Sizes) -> tuple:
    """The Trainer against the bare loop, per network and precision (target >= 0.95x)."""
    figures, lines, worst = {}, [], math.inf
    for name in sizes.speed_models:
        for label, precision in PRECISIONS.items():
            bare, tool = bare_img_s(name, precision, sizes), trainer_img_s(name, precision, sizes)
            figures[f"{name} {label}"] = {
                "bare_img_s": round(bare, 1),
                "tool_img_s": round(tool, 1),
            }
            lines.append(f"{name} {label} {tool:.0f} img/s ({tool / bare:.2f}x bare)")
            worst = min(worst, tool / bare)
    status = "PASS" if worst >= 0.95 or sizes.device == "cpu" else "FAIL"
    return status, "; ".join(lines), {"speed": figures}


def timm_train() -> tuple:
    """timm's train.py is a script of timm's repository, not of its package."""
    try:
        import timm
    except ImportError:
        return "SKIP", "timm not installed", {}
    script = os.path.join(os.path.dirname(os.path.dirname(timm.__file__)), "train.py")
    if not os.path.exists(script):
        return (
            "SKIP",
            f"timm {timm.__version__} is installed without train.py (a repository script)",
            {},
        )
    return "SKIP", f"timm's train.py found at {script}; not compared by this version", {}


# The run


def checks(tool: Tool) -> list[tuple]:
    """(name, check) in the order they run."""
    s = tool.sizes
    cuda = s.device == "cuda"
    train_runs = [
        ("ResNet-20 fp32 contiguous", "r20-fp32", ["-memoryFormat", "contiguous"]),
        ("ResNet-20 fp32 channels_last", "r20-cl", ["-memoryFormat", "channels_last"]),
        ("ResNet-20 bf16 channels_last", "r20-bf16", ["-precision", "bf16"]),
        ("ResNet-20 fp16 + GradScaler", "r20-fp16", ["-precision", "half"]),
        ("ResNet-20 -compile true", "r20-compile", ["-compile", "true"]),
    ]
    found = []
    for title, name, flags in train_runs:
        if name == "r20-fp16" and not cuda:
            found.append((title, lambda: ("SKIP", "fp16 runs on GPUs only", {})))
            continue
        argv = tool.cifar_args(name, "-nEpochs", str(s.epochs), *flags)
        found.append((title, lambda n=name, a=argv: trains(tool, n, a)))
    resnet50 = tool.jpeg_args("r50-bf16", 50, "-nEpochs", str(s.epochs), "-precision", "bf16",
                              "-LR", "0.002")  # fmt: skip
    # A dry run's few dozen images make too few steps for ResNet-50's loss to settle.
    learns = cuda
    found += [
        (
            "ResNet-50 bf16 channels_last (JPEG folder)",
            lambda: trains(tool, "r50-bf16", resnet50, learns),
        ),
        ("-cudnn deterministic twice", lambda: deterministic_twice(tool)),
        ("SIGKILL mid-epoch, resume", lambda: killed_and_resumed(tool)),
        ("SIGTERM saves", lambda: sigterm_saves(tool)),
        ("torchrun, -syncBN, eval = -testOnly", lambda: distributed(tool)),
        ("JPEG folder, loader workers", lambda: jpeg_folder(tool, False)),
        ("JPEG folder, -decodeOnDevice", lambda: jpeg_folder(tool, True)),
        ("-optnet peak memory", lambda: optnet_memory(tool)),
        ("speed: tool vs bare loop", lambda: speed(s)),
        ("speed: timm train.py", timm_train),
    ]
    return found


def write_summary(out: str, report: Report, sizes: Sizes) -> None:
    """OUT/summary.json and OUT/summary.md."""
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump({"device": sizes.device, "checks": report.rows}, handle, indent=2)
    lines = ["| check | status | detail | s |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['status']} | {r['detail']} | {r['seconds']} |"
              for r in report.rows]  # fmt: skip
    with open(os.path.join(out, "summary.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main_check(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a folder for the summary and the runs (made if missing)")
    parser.add_argument("--dry-run", action="store_true", help="the same checks on the CPU, tiny")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    work = os.path.join(args.out, "work")
    if os.path.exists(work) and os.listdir(work):
        print(f"error: {work} holds an earlier check; give an empty OUT", file=sys.stderr)
        return 2
    os.makedirs(work, exist_ok=True)
    cifar = write_cifar(os.path.join(work, "cifar"), sizes.cifar_per_batch)
    jpegs = write_jpegs(os.path.join(work, "jpegs"), sizes.jpegs_per_class, sizes.jpeg_side)
    tool = Tool(sizes, work, cifar, jpegs)
    report = Report()
    run_check(report, "environment", lambda: environment(sizes), sizes.seconds)
    for name, check in checks(tool):
        limit = sizes.compile_seconds if "-compile" in name else sizes.seconds
        run_check(report, name, check, limit)
    write_summary(args.out, report, sizes)
    failed = [r["check"] for r in report.rows if r["status"] == "FAIL"]
    print(f"{len(report.rows) - len(failed)} of {len(report.rows)} checks passed or skipped;"
          f" summary in {os.path.join(args.out, 'summary.md')}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_check())
