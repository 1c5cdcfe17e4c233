"""scripts/gpu_check.sh, the GPU proof, rehearsed on the CPU (--dry-run): every check's code
path runs at tiny sizes, and what needs a GPU says so instead of failing."""

import json
import os
import sys

import runs
from conftest import load_script

SCRIPT = os.path.join(runs.ROOT, "scripts", "gpu_check.sh")
GPU_ONLY = {"ResNet-20 fp16 + GradScaler", "-optnet peak memory"}


def gpu_check(*argv):
    return runs.process_run(["bash", SCRIPT, *argv], env={**os.environ, "PYTHON": sys.executable})


def test_the_dry_run_passes_every_check_the_cpu_can_make(tmp_path):
    done = gpu_check("--dry-run", tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = {row["check"]: row for row in summary["checks"]}
    assert summary["device"] == "cpu" and len(rows) == 16
    assert {name for name, row in rows.items() if row["status"] == "SKIP"} <= GPU_ONLY | {
        "JPEG folder, -decodeOnDevice",  # where TorchCodec is not installed
        "speed: timm train.py",  # timm's package has no train.py
    }
    assert all(row["status"] == "PASS" for name, row in rows.items() if name not in GPU_ONLY
               and row["status"] != "SKIP")  # fmt: skip
    assert rows["SIGKILL mid-epoch, resume"]["detail"] == "resumed weights bitwise equal"
    assert rows["-cudnn deterministic twice"]["detail"] == "weights bitwise equal"
    for name in ("ResNet-20 fp32 contiguous", "ResNet-20 bf16 channels_last"):
        losses = rows[name]["losses"]
        assert losses[-1] < losses[0], name
    assert set(rows["speed: tool vs bare loop"]["speed"]) == {
        f"{net} {precision} channels_last"
        for net in ("ResNet-50",)  # the rehearsal's one network (both on a GPU)
        for precision in ("bf16", "fp32")
    }
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert table[0] == "| check | status | detail | s |" and len(table) == 2 + len(rows)
    assert done.stdout.count("\n") == len(rows) + 1  # a line per check, then the total


def test_without_a_gpu_or_with_an_earlier_check_it_says_so_and_stops(tmp_path):
    done = gpu_check(tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr == "error: no CUDA device; run with --dry-run for the CPU rehearsal\n"
    (tmp_path / "old" / "work").mkdir(parents=True)
    (tmp_path / "old" / "work" / "leftover").write_text("")
    done = gpu_check("--dry-run", tmp_path / "old")
    assert done.returncode == 2 and "holds an earlier check" in done.stderr


def test_the_gpu_run_keeps_every_speed_network_and_four_epochs():
    """The rehearsal is smaller; the GPU run measures what docs/performance.md reports."""
    script = load_script("gpu_check")
    assert script.GPU.speed_models == tuple(script.SPEED_MODELS) and script.GPU.epochs == 4
    assert set(script.DRY.speed_models) < set(script.SPEED_MODELS)
