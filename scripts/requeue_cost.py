"""The cost of a requeue on this machine: from the requeue signal to the saved checkpoint,
and from the restarted command to its first new training iteration.

    python scripts/requeue_cost.py resnet20=/usr/share/datasets/fashion-mnist \\
        resnet50=/path/to/class/folders

Each case trains main.py in a process of its own with `-save DIR -resume DIR` (as
scripts/slurm/train.sbatch does), sends SIGUSR1 (the template's signal) after a few
iterations, waits for the saved checkpoint and the exit, then runs the same command again
and times it to its first training iteration, which must be the one after the saved one.
Outside SLURM nothing is requeued; the scheduler's own wait before a requeued job starts
again (about two minutes by default) comes on top."""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {  # name -> (what it trains, main.py flags, the default global batch)
    "resnet20": ("ResNet-20, Fashion-MNIST", "-dataset fashionmnist -depth 20", 128),
    "resnet50": ("ResNet-50, class folders", "-dataset imagenet -depth 50", 32),
}
ITERATION = re.compile(r" \| Epoch: \[(\d+)\]\[(\d+)/\d+\]    Time (\d+\.\d+)")
SAVED = re.compile(r"=> SIGUSR1 at epoch (\d+), iteration (\d+)(, while waiting for data)?:")
FINISHED_EPOCH = re.compile(r"=> SIGUSR1 after epoch (\d+):")


class Cost(NamedTuple):
    """One case's times, in seconds, and its checkpoint's size in bytes."""

    saved: float  # signal -> the line saying the checkpoint is saved
    exited: float  # signal -> the process's exit
    restarted: float  # the command started again -> its first new training iteration
    iteration: float  # the median training iteration before the signal
    checkpoint_bytes: int


def timed_lines(process: subprocess.Popen):
    """(seconds since the epoch of time.monotonic, line) for each line the process prints."""
    for line in process.stdout:
        yield time.monotonic(), line


def start(flags: list[str], log) -> tuple[subprocess.Popen, float]:
    """main.py with flags, unbuffered, its stderr to log; and when it started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, os.path.join(ROOT, "main.py"), *flags]
    began = time.monotonic()
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env), began


def failed(what: str, log) -> SystemExit:
    """The one error line, after what the run printed on stderr."""
    log.seek(0)
    print(log.read()[-3000:], file=sys.stderr)
    return SystemExit(f"error: {what}")


def signalled_run(flags: list[str], after: int, log) -> tuple[float, float, list[float], set]:
    """Train until `after` iterations are printed, send SIGUSR1: (signal -> saved line,
    signal -> exit, the iteration times, where the next run may start: the (epoch,
    iteration) after the saved one, or the next epoch's first when the epoch was done)."""
    process, _ = start(flags, log)
    times, sent, saved, resume_at = [], None, None, None
    for now, line in timed_lines(process):
        if (match := ITERATION.match(line)) and sent is None:
            times.append(float(match.group(3)))
            if len(times) == after:
                process.send_signal(signal.SIGUSR1)
                sent = time.monotonic()
        elif sent is not None and (match := SAVED.match(line)):
            epoch, iteration = int(match.group(1)), int(match.group(2))
            saved, resume_at = now, {(epoch, iteration + 1), (epoch + 1, 1)}
        elif sent is not None and (match := FINISHED_EPOCH.match(line)):
            saved, resume_at = now, {(int(match.group(1)) + 1, 1)}
    status = process.wait()
    exited = time.monotonic()
    if sent is None or saved is None or status != 128 + signal.SIGUSR1:
        raise failed(f"the run did not save on SIGUSR1 (exit status {status})", log)
    return saved - sent, exited - sent, times, resume_at


def restarted_run(flags: list[str], resume_at: set, log) -> float:
    """The same command again: seconds to its first training iteration, checked to be one
    of resume_at; the run is then stopped."""
    process, began = start(flags, log)
    for now, line in timed_lines(process):
        if match := ITERATION.match(line):
            process.kill()
            process.wait()
            found = (int(match.group(1)), int(match.group(2)))
            if found not in resume_at:
                raise failed(f"the restart began at {found}, not at {sorted(resume_at)}", log)
            return now - began
    raise failed(f"the restart trained nothing (exit status {process.wait()})", log)


def measure(flags: list[str], after: int) -> Cost:
    """The cost of one requeue of the run that flags describe (with -save/-resume added)."""
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryFile("w+") as log:
        run = os.path.join(folder, "run")
        flags = [*flags, "-gen", os.path.join(folder, "gen"), "-save", run, "-resume", run]
        saved, exited, times, resume_at = signalled_run(flags, after, log)
        size = sum(os.path.getsize(os.path.join(run, n)) for n in os.listdir(run)
                   if n.endswith(".pth") and n != "latest.pth")  # fmt: skip
        restarted = restarted_run(flags, resume_at, log)
    return Cost(saved, exited, restarted, statistics.median(times[1:] or times), size)


def line(label: str, batch: int, cost: Cost) -> str:
    """The case's line: each time, and the whole cost in seconds and in iterations."""
    total = cost.exited + cost.restarted
    return (
        f"{label}, batch {batch}: signal -> saved {cost.saved:.2f} s (exited"
        f" {cost.exited:.2f} s); restart -> first iteration {cost.restarted:.2f} s;"
        f" checkpoint {cost.checkpoint_bytes / 2**20:.1f} MiB; one iteration"
        f" {cost.iteration:.3f} s: a requeue costs {total:.1f} s, the time of"
        f" {total / cost.iteration:.0f} iterations"
    )


def parse(argv=None) -> argparse.Namespace:
    """The cases (NAME=DATA) and the options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", metavar="NAME=DATA", help=f"of {', '.join(CASES)}")
    parser.add_argument("-batchSize", type=int, help="the global batch (default: the case's)")
    parser.add_argument("-after", type=int, default=20, help="iterations before the signal")
    parser.add_argument("-flags", default="", help="more main.py flags for every case")
    args = parser.parse_args(argv)
    for case in args.cases:
        name, _, data = case.partition("=")
        if name not in CASES or not data:
            parser.error(f"{case}: give NAME=DATA, NAME one of {', '.join(CASES)}")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    for case in args.cases:
        name, _, data = case.partition("=")
        label, flags, batch = CASES[name]
        batch = args.batchSize or batch
        flags = ["-netType", "resnet", *flags.split(), "-data", data, "-batchSize", str(batch),
                 "-nEpochs", "1000", "-tensorboard", "false", "-printFreq", "1",
                 *args.flags.split()]  # fmt: skip
        print(line(label, batch, measure(flags, args.after)), flush=True)


if __name__ == "__main__":
    main()
