"""-requeueSignal and -maxRequeues, the tool's side of a SLURM requeue: a requeue signal saves
like SIGTERM; outside a job it says there is nothing to requeue; a job past its cap, or one
that scontrol cannot requeue, is said in one line with the checkpoint intact. (A real
one-node SLURM is the scheduler's side: make test-slurm.)"""

import os
import re
import signal

import pytest
import runs
from test_cli import small_cifar_args
from test_crash import assert_bitwise_equal, final_weights

import checkpoints
from runtime import slurm

FLAGS = "-nEpochs 2 -batchSize 4 -cudnn deterministic"


@pytest.mark.parametrize(
    ("names", "numbers"),
    [("USR1,USR2", (signal.SIGUSR1, signal.SIGUSR2)), ("sighup", (signal.SIGHUP,)),
     ("USR2, usr2", (signal.SIGUSR2,)), ("none", ())],
)  # fmt: skip
def test_requeue_signals_are_signal_names_with_or_without_sig(names, numbers):
    assert slurm.signal_numbers(names) == numbers


@pytest.mark.parametrize(("names", "says"), [
    ("TERM", "TERM stops a run without requeueing it"), ("SIGKILL", "cannot be caught"),
    ("USR3", "USR3 is not a signal name"), (",", "give signal names"),
])  # fmt: skip
def test_a_requeue_signal_that_cannot_be_one_is_one_line(names, says, cifar10_root, tmp_path):
    done = runs.main_run(
        [*small_cifar_args(cifar10_root, tmp_path / "run"), "-requeueSignal", names]
    )
    assert done.returncode == 2 and done.stderr.startswith(f"error: -requeueSignal {names}: ")
    assert says in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def stopped_by_usr1(data, save, env=None):
    """The run, sent SIGUSR1 as it prints epoch 1's second training line."""

    def signal_at_iteration_2(line):
        if line.startswith(" | Epoch: [1][2/"):
            os.kill(os.getpid(), signal.SIGUSR1)

    argv = small_cifar_args(data, save, FLAGS)
    return runs.main_run(argv, env=env, on_line=signal_at_iteration_2)


def saved_line(done) -> re.Match:
    """The line that says where the run stopped and what was saved."""
    found = re.search(r"=> SIGUSR1 (at epoch 1, iteration \d+|after epoch 1): checkpoint saved"
                      r" in (\S+); (.*)", done.stdout)  # fmt: skip
    assert found, done.stdout[-2000:]
    return found


def test_outside_slurm_a_requeue_signal_saves_says_so_and_resumes_bitwise(cifar10_root, tmp_path):
    whole = runs.main_run(small_cifar_args(cifar10_root, tmp_path / "whole", FLAGS))
    assert whole.returncode == 0, whole.stderr
    save = tmp_path / "cut"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    done = stopped_by_usr1(cifar10_root, save, env)
    assert done.returncode == 128 + signal.SIGUSR1, done.stderr
    line = saved_line(done)
    assert line.group(2) == str(save)
    assert line.group(3) == f"not in a SLURM job, nothing to requeue: continue with -resume {save}"
    assert checkpoints.latest(str(save)).epoch == 1
    resumed = runs.main_run([*small_cifar_args(cifar10_root, save, FLAGS), "-resume", save])
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(final_weights(save, 2), final_weights(tmp_path / "whole", 2))
    records = [line for line in (save / "metrics.jsonl").read_text().splitlines()
               if '"segment"' in line]  # fmt: skip
    assert len(records) == 2 and not any("slurm_job" in line for line in records)


def test_a_job_past_its_requeue_cap_saves_and_stops(cifar10_root, tmp_path):
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "20"}
    done = stopped_by_usr1(cifar10_root, tmp_path / "run", env)
    assert done.returncode == 128 + signal.SIGUSR1, done.stderr
    assert saved_line(done).group(3) == (
        "SLURM job 4242 not requeued: it has restarted 20 times (-maxRequeues 20); resubmit it"
        f" to go on (-resume {tmp_path / 'run'})"
    )
    segment = next(line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if '"segment"' in line)  # fmt: skip
    assert '"slurm_job": "4242"' in segment and '"slurm_restarts": 20' in segment


def test_without_scontrol_the_job_is_not_requeued_and_the_checkpoint_loads(cifar10_root, tmp_path):
    bare = tmp_path / "bin"  # a PATH without scontrol
    bare.mkdir()
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_JOB_ID": "73", "PATH": str(bare)}  # fmt: skip
    done = stopped_by_usr1(cifar10_root, tmp_path / "run", env)
    assert done.returncode == 2
    assert done.stderr == (
        "error: cannot requeue SLURM job 70_3: scontrol is not on PATH; the checkpoint is saved:"
        f" resubmit the job (its command, with -resume {tmp_path / 'run'})\n"
    )
    found = checkpoints.latest(str(tmp_path / "run"))
    assert found is not None and found.epoch == 1


def test_one_command_starts_a_run_and_continues_it(cifar10_root, tmp_path):
    """A requeued job runs its command again: -save DIR -resume DIR starts afresh while DIR
    does not exist, and continues the run once it does."""
    save = tmp_path / "job"
    argv = [*small_cifar_args(cifar10_root, save, "-nEpochs 1"), "-resume", save]
    first = runs.main_run(argv)
    assert first.returncode == 0, first.stderr
    assert f"=> No run in {save} yet: training starts from scratch" in first.stdout
    again = runs.main_run([*small_cifar_args(cifar10_root, save, "-nEpochs 2"), "-resume", save])
    assert again.returncode == 0, again.stderr
    assert f"=> Loading checkpoint {save}/latest.pth" in again.stdout
    assert checkpoints.latest(str(save)).epoch == 2


def test_a_requeue_signal_before_training_stops_with_nothing_saved(cifar10_root, tmp_path):
    """Before the first step there is nothing to save: the run stops (in a SLURM job the job
    is requeued all the same, to start again) and writes nothing."""
    save = tmp_path / "run"

    def signal_while_starting(line):
        if line.startswith("=> No run in"):
            os.kill(os.getpid(), signal.SIGUSR1)

    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    argv = [*small_cifar_args(cifar10_root, save, FLAGS), "-resume", save]
    done = runs.main_run(argv, env=env, on_line=signal_while_starting)
    assert done.returncode == 128 + signal.SIGUSR1, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "=> SIGUSR1 while starting: nothing was saved; not in a SLURM job, nothing to requeue:"
        f" continue with -resume {save}"
    )
    assert not save.exists()


COST_LINE = re.compile(
    r"ResNet-20, Fashion-MNIST, batch 4: signal -> saved (\d+\.\d\d) s \(exited (\d+\.\d\d) s\);"
    r" restart -> first iteration (\d+\.\d\d) s; checkpoint (\d+\.\d) MiB; one iteration"
    r" (\d+\.\d{3}) s: a requeue costs (\d+\.\d) s, the time of (\d+) iterations\n"
)


def test_the_requeue_cost_is_measured_from_a_signalled_run_and_its_restart(fashion_root):
    """scripts/requeue_cost.py: its times come from the two runs it made (the restart began
    at the iteration after the saved one, or it would have failed), and add up."""
    script = os.path.join(runs.ROOT, "scripts", "requeue_cost.py")
    result = runs.script_run(script, [f"resnet20={fashion_root}", "-batchSize", "4", "-after", "2"])
    assert result.returncode == 0, result.stderr
    saved, exited, restarted, size, iteration, total, iterations = map(
        float, COST_LINE.fullmatch(result.stdout).groups()
    )
    assert 0 < saved <= exited and restarted > 0 and iteration > 0
    assert abs(total - (exited + restarted)) <= 0.1
    # total and iteration are printed to 0.1 and 0.001 s: the count lies within their rounding
    fewest, most = (total - 0.05) / (iteration + 0.0005), (total + 0.05) / (iteration - 0.0005)
    assert fewest - 1 < iterations < most + 1
    assert 1.9 < size < 2.4  # ResNet-20's weights and their momentum: 2 x 0.27M float32s


def test_the_requeue_cost_script_names_its_cases():
    script = os.path.join(runs.ROOT, "scripts", "requeue_cost.py")
    result = runs.script_run(script, ["resnet18=/data"])
    assert result.returncode == 2
    assert "resnet18=/data: give NAME=DATA, NAME one of resnet20, resnet50" in result.stderr


@pytest.mark.parametrize("resumes_itself", [False, True])
def test_the_stop_line_says_how_to_continue(cifar10_root, tmp_path, resumes_itself):
    """A command that already resumes its -save folder is run again as it is; another is
    told to add -resume."""
    save = tmp_path / "run"
    extra = f" -resume {save}" if resumes_itself else ""
    argv = small_cifar_args(cifar10_root, save, f"-nEpochs 2 -batchSize 4{extra}")

    def stop(line):
        if line.startswith(" | Epoch: [1][2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    done = runs.main_run(argv, on_line=stop)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    said = "=> Stopped by SIGTERM at epoch 1, iteration 2; checkpoint saved. "
    if resumes_itself:
        assert said + "Run the same command again to continue\n" in done.stdout
    else:
        assert said + f"Continue with the same command and -resume {save}\n" in done.stdout
