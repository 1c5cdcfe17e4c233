"""A run on a real one-node SLURM (scripts/slurm/local_cluster.sh; make test-slurm, not make
test): scripts/slurm/train.sbatch under a one-minute time limit is signalled, saves, requeues
itself, restarts and finishes with the weights of the same run never stopped."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import runs
import torch

import checkpoints

ROOT = runs.ROOT
TEMPLATE = os.path.join(ROOT, "scripts", "slurm", "train.sbatch")
FASHION = "/usr/share/datasets/fashion-mnist"
TRAINING = [
    "-netType",
    "resnet",
    "-depth",
    "8",
    "-batchSize",
    "128",
    "-tensorboard",
    "false",
    "-printFreq",
    "1",
]  # the tests wait for given iterations
SECONDS = 900  # the whole of one job, restarts included
POLL_SECONDS = 1  # how often the scheduler is asked about a job (it pushes nothing)


def job_fields(job: str) -> dict:
    """scontrol's record of a job, as a dict (JobState, Restarts, Reason, ...)."""
    line = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", line))


def run_to_its_end(job: str) -> dict:
    """Wait for the job's end; a requeued job is let start at once, not after SLURM's two
    minutes (what a user's job waits makes no difference to what the test checks)."""
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if fields["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return fields
        if fields["JobState"] == "PENDING" and fields.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        time.sleep(POLL_SECONDS)  # waiting on the scheduler, which has no event to wait on
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not end within {SECONDS} s: {job_fields(job)}")


def submit(folder, *sbatch_options: str, env: dict, flags=("-nEpochs", "1")) -> str:
    """The template submitted with the test's options and main.py flags; its job id."""
    folder.mkdir(exist_ok=True)
    command = [shutil.which("sbatch"), "--parsable", "--gpus-per-task=0", "--ntasks-per-node=1",
               "--cpus-per-task=1", f"--output={folder}/job.out", *sbatch_options, TEMPLATE,
               *TRAINING, *flags, "-gen", str(folder / "gen")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def weights(save) -> dict:
    return torch.load(os.path.join(save, "model_1.pth"), weights_only=True)["model"]


@pytest.fixture
def job_env(tmp_path) -> dict:
    """The template's variables: the real Fashion-MNIST, this Python, one thread."""
    return {**os.environ, "DATASET": "fashionmnist", "DATA": FASHION, "RUN": str(tmp_path / "run"),
            "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_a_job_over_its_time_limit_requeues_itself_and_ends_bitwise_as_one_run(job_env, tmp_path):
    job = submit(tmp_path, "--time=1", "--signal=USR1@40", env=job_env)
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "COMPLETED", said[-3000:]
    restarts = int(fields["Restarts"])
    assert restarts >= 1, said[-3000:]
    requeued = re.findall(r"=> SIGUSR1 (at epoch 1, iteration \d+|while \w[^:]*): (checkpoint"
                          rf" saved in \S+|nothing was saved); SLURM job {job} requeued"
                          r" \(restart (\d+)\)", said)  # fmt: skip
    assert [int(r[2]) for r in requeued] == list(range(1, restarts + 1)), said[-3000:]
    starts = re.findall(r"=> SLURM job \d+, restart (\d+)", said)
    assert starts == [str(n) for n in range(restarts + 1)]
    assert_as_one_run(job_env, tmp_path)
    segments = [line for line in open(os.path.join(job_env["RUN"], "metrics.jsonl"))
                if '"segment"' in line]  # fmt: skip
    assert [f'"slurm_restarts": {n}' in line for n, line in enumerate(segments)] == [True] * len(
        segments
    )


def finish_outside_slurm(job_env) -> subprocess.CompletedProcess:
    """The job's command run to its end here (-save RUN -resume RUN), as a resubmission would."""
    return subprocess.run([sys.executable, runs.MAIN, "-dataset", "fashionmnist", "-data", FASHION,
                           *TRAINING, "-nEpochs", "1", "-save", job_env["RUN"], "-resume",
                           job_env["RUN"]], env=job_env, capture_output=True,
                          text=True)  # fmt: skip


def assert_as_one_run(job_env, tmp_path) -> None:
    """The job's final weights are bitwise those of the same run never stopped."""
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, runs.MAIN, "-dataset", "fashionmnist", "-data",
                           FASHION, *TRAINING, "-nEpochs", "1", "-save", str(reference), "-gen",
                           str(tmp_path / "gen")], env=job_env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    cut, whole = weights(job_env["RUN"]), weights(reference)
    assert cut.keys() == whole.keys() and all(torch.equal(cut[k], whole[k]) for k in cut)


def test_a_preempted_job_saves_is_requeued_by_slurm_and_ends_bitwise(job_env, tmp_path):
    """PreemptMode=REQUEUE (no GraceTime): an urgent job that needs every CPU pre-empts the
    run; SLURM sends SIGTERM, the run saves, SLURM requeues it, and it continues."""
    job = submit(tmp_path, "--time=10", env=job_env)
    output_line(tmp_path / "job.out", r"^ \| Epoch: \[1\]\[5/")
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent",
                             f"--cpus-per-task={os.cpu_count()}", f"--output={tmp_path}/u.out",
                             "--wrap", "true"], capture_output=True, text=True)  # fmt: skip
    assert urgent.returncode == 0, urgent.stderr
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", said[-3000:]
    assert re.search(r"=> Stopped by SIGTERM at epoch 1, iteration \d+; checkpoint saved", said)
    assert re.findall(r"=> SLURM job \d+, restart (\d+)", said) == ["0", "1"], said[-3000:]
    assert run_to_its_end(urgent.stdout.strip())["JobState"] == "COMPLETED"
    assert_as_one_run(job_env, tmp_path)


def test_a_second_signal_during_the_save_leaves_a_run_that_ends_bitwise(job_env, tmp_path):
    """The requeue signal, then SIGTERM at once (it may come while the checkpoint is being
    written, or after): whichever way the job ends, the checkpoint loads and the run, taken
    up from it, ends as if never stopped."""
    job = submit(tmp_path, "--time=10", env=job_env, flags=("-nEpochs", "1", "-checkpointEvery",
                 "5"))  # fmt: skip
    output_line(tmp_path / "job.out", r"^ \| Epoch: \[1\]\[12/")  # a checkpoint at 10
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert checkpoints.latest(job_env["RUN"]) is not None, said[-3000:]  # it loads
    if fields["JobState"] != "COMPLETED":  # ended by the second signal: resubmitted by hand
        done = finish_outside_slurm(job_env)
        assert done.returncode == 0, done.stderr[-3000:]
    assert not [name for name in os.listdir(job_env["RUN"]) if name.startswith(".partial-")]
    assert_as_one_run(job_env, tmp_path)


def output_line(path, pattern: str) -> re.Match:
    """Wait until the job's output holds a line matching pattern (the job runs meanwhile)."""
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text() if path.exists() else "", re.M)
        if found:
            return found
        time.sleep(POLL_SECONDS)  # waiting on the job's output, which has no event to wait on
    pytest.fail(f"no line {pattern!r} in {path}")


def test_scancel_saves_and_the_job_is_not_requeued(job_env, tmp_path):
    job = submit(tmp_path, "--time=10", env=job_env)
    output_line(tmp_path / "job.out", r"^ \| Epoch: \[1\]\[5/")
    subprocess.run(["scancel", job], check=True)
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0", fields
    stopped = re.search(
        r"=> Stopped by SIGTERM at epoch 1, iteration (\d+); checkpoint saved", said
    )
    assert stopped, said[-3000:]
    assert "requeued" not in said
    assert checkpoints.latest(job_env["RUN"]).iteration == int(stopped.group(1))


def test_past_max_requeues_the_signal_saves_and_the_job_ends(job_env, tmp_path):
    job_env = {**job_env, "RUN": str(tmp_path / "capped")}
    job = submit(tmp_path, "--time=1", "--signal=USR1@40", env=job_env, flags=("-nEpochs", "3",
                 "-maxRequeues", "1"))  # fmt: skip
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["Restarts"] == "1", said[-3000:]
    assert re.search(rf"; SLURM job {job} requeued \(restart 1\)", said), said[-3000:]
    assert re.search(rf"; SLURM job {job} not requeued: it has restarted 1 times \(-maxRequeues 1\)",
                     said), said[-3000:]  # fmt: skip


def test_an_array_task_requeues_itself_alone(job_env, tmp_path):
    job = submit(tmp_path, "--time=1", "--signal=USR1@40", "--array=3", env=job_env)
    task = f"{job}_3"
    fields = run_to_its_end(task)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "COMPLETED" and int(fields["Restarts"]) >= 1, said[-3000:]
    assert re.search(rf"; SLURM job {task} requeued \(restart 1\)", said), said[-3000:]


def test_two_tasks_on_gloo_requeue_together_and_end_as_one_run(job_env, tmp_path):
    """Both tasks get the signal, stop at the same iteration and save; rank 0 requeues."""
    two = ("--ntasks-per-node=2",)
    whole = submit(
        tmp_path / "whole", *two, "--time=10", env={**job_env, "RUN": str(tmp_path / "w")}
    )
    assert run_to_its_end(whole)["JobState"] == "COMPLETED"
    job = submit(tmp_path, *two, "--time=1", "--signal=USR1@40", env=job_env)
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "COMPLETED" and int(fields["Restarts"]) >= 1, said[-3000:]
    lines = re.findall(rf"; SLURM job {job} requeued \(restart (\d+)\)", said)
    assert lines == [str(n) for n in range(1, int(fields["Restarts"]) + 1)], said[-3000:]
    cut, uncut = weights(job_env["RUN"]), weights(tmp_path / "w")
    assert cut.keys() == uncut.keys() and all(torch.equal(cut[k], uncut[k]) for k in cut)


def test_without_scontrol_the_job_says_so_once_and_its_checkpoint_loads(job_env, tmp_path):
    """A compute node whose PATH lacks scontrol (srun and date only); the signal sent once
    training runs, as a time limit's would be."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("srun", "date"):
        (tools / name).symlink_to(shutil.which(name))
    env = {**job_env, "PATH": str(tools)}
    job = submit(tmp_path, "--time=10", env=env)
    output_line(tmp_path / "job.out", r"^ \| Epoch: \[1\]\[5/")  # training: a checkpoint to save
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # as --signal=USR1@T sends it
    fields = run_to_its_end(job)
    said = (tmp_path / "job.out").read_text()
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", said[-3000:]
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot requeue SLURM job {job}: scontrol is not on PATH; the checkpoint is"
        f" saved: resubmit the job (its command, with -resume {job_env['RUN']})"
    ], said[-3000:]
    assert checkpoints.latest(job_env["RUN"]) is not None
