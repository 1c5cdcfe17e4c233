"""A run called in-process: main.main(argv) returns its exit status and leaves the process
as it found it, so that a second run in the same process prints and saves what the first
did (what lets the other tests call runs in this process, tests/runs.py)."""

import re
import signal
import sys
import threading

import torch
from test_cli import small_cifar_args

import main


def process_state() -> tuple:
    """What a run may change in its process."""
    cudnn = torch.backends.cudnn
    handlers = tuple(signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM))
    return (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
            handlers, threading.excepthook, sys.stdout.errors, threading.active_count())  # fmt: skip


def without_times(text: str) -> str:
    """The printed lines without the timings and paths that differ between two runs."""
    text = re.sub(r"Time [\d.]+  Data [\d.]+", "Time -  Data -", text)
    return re.sub(r"in \S+/run[12]\b", "in RUN", text)


def test_two_runs_in_one_process_print_and_train_the_same(cifar10_root, tmp_path, capsys):
    state, rng = process_state(), torch.get_rng_state()
    outputs, weights = [], []
    for name in ("run1", "run2"):
        argv = small_cifar_args(cifar10_root, tmp_path / name, "-nEpochs 1 -batchSize 8")
        assert main.main([*argv, "-cudnn", "deterministic", "-tensorboard", "false"]) == 0
        outputs.append(without_times(capsys.readouterr().out))
        weights.append(torch.load(tmp_path / name / "model_1.pth", weights_only=True)["model"])
        assert process_state() == state and torch.equal(torch.get_rng_state(), rng)
    assert outputs[0] == outputs[1] and " * Finished top1:" in outputs[0]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
