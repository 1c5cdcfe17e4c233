"""The cost of communication on one machine: the tool training ResNet-20 on Fashion-MNIST as
1 process x 2 threads and as 2 torchrun processes (gloo) x 1 thread, same global batch.

Each run prints a line every 10 iterations; the script reads the per-iteration times of
the windows after the first, then stops the run with SIGTERM (it saves and exits)."""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = re.compile(r" \| Epoch: \[\d+\]\[\d+/\d+\]    Time (\d+\.\d+)")


def seconds_per_iteration(launcher: list[str], flags: list[str], windows: int, env: dict) -> float:
    """Median per-iteration time of `windows` printed windows after the first."""
    errors = tempfile.TemporaryFile("w+")  # shown only if the run fails
    command = [*launcher, os.path.join(ROOT, "main.py"), *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
    times = []
    for line in process.stdout:
        match = TIME.match(line)
        if match:
            times.append(float(match.group(1)))
        if len(times) > windows:
            break
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=600)
    if len(times) <= windows:
        errors.seek(0)
        print(errors.read()[-3000:], file=sys.stderr)
        sys.exit(f"error: the run ended before {windows + 1} printed lines")
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = {
        "1 process x 2 threads": ([sys.executable], {"OMP_NUM_THREADS": "2"}),
        "2 gloo processes x 1 thread": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"],
            {"OMP_NUM_THREADS": "1"},
        ),
    }
    print(f"ResNet-20, Fashion-MNIST, global batch {args.batch}, {os.cpu_count()} CPUs")
    print("| configuration | s / iteration | img/s |\n|---|---|---|")
    speeds = {}
    for label, (launcher, threads) in runs.items():
        with tempfile.TemporaryDirectory() as save:
            flags = [
                "-dataset",
                "fashionmnist",
                "-netType",
                "resnet",
                "-depth",
                "20",
                "-batchSize",
                str(args.batch),
                "-nThreads",
                "0",
                "-printFreq",
                "10",
                "-data",
                args.data,
                "-save",
                save,
                "-gen",
                save,
            ]
            seconds = seconds_per_iteration(launcher, flags, args.windows, {**env, **threads})
        speeds[label] = args.batch / seconds
        print(f"| {label} | {seconds:.3f} | {speeds[label]:.1f} |")
    ratio = speeds["2 gloo processes x 1 thread"] / speeds["1 process x 2 threads"]
    print(f"2 processes / 1 process: {ratio:.2f}x")


if __name__ == "__main__":
    main()
