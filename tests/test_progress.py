"""What a run says without a terminal: the interval of its lines, the time taken and left."""

import os
import re
import subprocess

import pytest
import runs
import torch
from runs import main_run
from test_cli import small_cifar_args
from test_train import Memorizer, batches
from trainers import cpu_trainer

from progress import Progress, RunClock, duration

LEFT = r"  \((\d+:\d\d:\d\d) elapsed; left: epoch (\d+:\d\d:\d\d), run (\d+:\d\d:\d\d)\)"


class FakeTime:
    """A clock that moves only when told."""

    def __init__(self):
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def seconds(text: str) -> int:
    """h:mm:ss as seconds."""
    hours, minutes, secs = (int(part) for part in text.split(":"))
    return 3600 * hours + 60 * minutes + secs


def test_durations_read_as_hours_minutes_seconds():
    assert [duration(s) for s in (0, 59.4, 61, 3600 * 25 + 62)] == [
        "0:00:00", "0:00:59", "0:01:01", "25:01:02"
    ]  # fmt: skip


def test_time_left_counts_the_pass_the_test_and_the_epochs_after():
    now = FakeTime()
    clock = RunClock(last_epoch=4, now=now)
    clock.begin("train", 1, 100, 0)
    now.seconds += 25  # 0.5 s an iteration: 50 s a training pass
    assert clock.at(50) == "  (0:00:25 elapsed; left: epoch 0:00:25, run 0:02:55)"
    now.seconds += 25
    clock.end("train")
    clock.begin("val", 1, 10, 0)
    now.seconds += 10  # 2 s a test iteration: an epoch is 50 s + 20 s
    assert clock.at(5) == "  (0:01:00 elapsed; left: epoch 0:00:10, run 0:03:40)"
    now.seconds += 10
    clock.end("val")
    assert clock.epoch_line(1) == (
        "=> Epoch 1 took 0:01:10 (train 0:00:50, test 0:00:20); about 0:03:30 left for 3 more"
        " epochs"
    )


def test_a_resumed_pass_is_timed_by_the_iterations_this_process_did():
    now = FakeTime()
    clock = RunClock(last_epoch=1, now=now)
    clock.begin("train", 1, 100, 60)  # 60 iterations trained before the resume
    now.seconds += 20
    assert clock.at(80).endswith("left: epoch 0:00:20, run 0:00:20)")  # 1 s an iteration
    clock.end("train")
    clock.begin("val", 1, 10, 0)
    clock.end("val")
    assert clock.epoch_line(1).endswith("; 0:00:20 since this run (or resume) began")


def test_auto_logs_about_twenty_lines_a_pass_and_records_every_iteration():
    torch.manual_seed(0)
    images, labels = torch.randn(90, 3, 4, 4), torch.randint(0, 3, (90,))
    model = Memorizer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lines, records = [], []
    trainer = cpu_trainer(model, optimizer, lambda _epoch, _part: 0.1)
    trainer.reporting.print_every = None  # -printFreq auto, without a terminal:
    trainer.reporting.progress = Progress(lines.append, record=records.append, thin=True)
    trainer.train(1, batches(images, labels, 2))  # 45 iterations: a line every 3
    trained = [re.match(r" \| Epoch: \[1\]\[(\d+)/45\]", line) for line in lines]
    assert [int(m.group(1)) for m in trained if m] == list(range(3, 46, 3))
    assert [r["iter"] for r in records if r["iter"] is not None] == list(range(1, 46))
    for line in lines[1:3]:  # each line logged is the Lua's line of its own iteration
        n = int(re.match(r" \| Epoch: \[1\]\[(\d+)/", line).group(1))
        said = float(re.search(r"Err (\d+\.\d+)", line).group(1))
        assert said == pytest.approx(records[n - 1]["loss"], abs=5e-5)


def test_a_logged_run_says_the_time_left_on_each_line_and_after_each_epoch(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path / "run", "-nEpochs 2 -batchSize 4")
    done = main_run(argv)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    printed = [line for line in lines if line.startswith((" | Epoch: [", " | Test: ["))]
    assert len(printed) == 2 * (5 + 5)  # every iteration: 5 a pass, under 20
    found = [re.search(LEFT + "$", line) for line in printed]
    assert all(found), printed
    elapsed = [seconds(m.group(1)) for m in found]
    assert elapsed == sorted(elapsed)  # the run's clock, not the pass's
    last = found[-1]
    assert seconds(last.group(2)) == seconds(last.group(3)) == 0  # nothing left at the end
    epoch_lines = [line for line in lines if line.startswith("=> Epoch ")]
    assert re.fullmatch(
        r"=> Epoch 1 took \d+:\d\d:\d\d \(train \d+:\d\d:\d\d, test \d+:\d\d:\d\d\); about"
        r" \d+:\d\d:\d\d left for 1 more epoch",
        epoch_lines[0],
    )
    assert epoch_lines[1].endswith("since this run (or resume) began") and len(epoch_lines) == 2


@pytest.mark.parametrize("flag", ["-printFreq 1", "-printFreq 2"])
def test_a_printfreq_given_prints_the_lua_lines_at_that_interval(cifar10_root, tmp_path, flag):
    argv = small_cifar_args(cifar10_root, tmp_path / "run", f"-batchSize 4 {flag}")
    done = main_run(argv)
    every = int(flag.split()[1])
    numbers = re.findall(r" \| Epoch: \[1\]\[(\d)/5\]", done.stdout)
    assert numbers == [str(n) for n in range(1, 6) if n % every == 0 or n == 5]


def test_only_auto_without_a_terminal_thins_the_lines(monkeypatch):
    from types import SimpleNamespace

    from run import epochs

    loaders = [SimpleNamespace(dataset=SimpleNamespace(classes=list("abcdef")))]
    for terminal, every, thin in [(False, None, True), (False, 1, False), (True, None, False)]:
        monkeypatch.setattr("sys.stdout.isatty", lambda terminal=terminal: terminal)
        assert epochs.shown(loaders, every) == {"bar": terminal, "top5": True, "thin": thin}


def test_a_log_file_gets_each_line_as_it_is_printed(cifar10_root, tmp_path):
    """Without a terminal (a pipe here, a job's output file on a cluster) each line is
    written out when printed: the first epoch's start is read while that epoch trains."""
    save = tmp_path / "run"
    argv = small_cifar_args(cifar10_root, save, "-nEpochs 50 -batchSize 1")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    process = runs.start_main(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in process.stdout:
            if line.startswith("=> Training epoch # 1"):
                assert not (save / "model_1.pth").exists()  # epoch 1 is not over yet
                break
        else:
            pytest.fail("the run ended without starting epoch 1")
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
