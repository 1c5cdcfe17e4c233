"""A SLURM job's side of a stop: the signals that ask a run to save and requeue its job
(-requeueSignal, sent by `sbatch --signal` before the time limit), the job to requeue (an
array task, not its whole array), the cap on requeues (-maxRequeues against
SLURM_RESTART_COUNT), and `scontrol requeue` itself."""

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from errors import Stopped, UsageError

# Signals that stop a run without requeueing (scancel, Ctrl-C), or that cannot be caught.
NOT_REQUEUE = ("SIGINT", "SIGTERM", "SIGKILL", "SIGSTOP")
# -requeueSignal's default; main.py holds them pending while it starts (launch releases them).
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
SCONTROL_SECONDS = 60  # scontrol answers in a second; a hung controller must not hold the job


@dataclass(frozen=True)
class Requeue:
    """What a requeue signal does: which signals ask for it, and how many restarts a job
    may have before it only saves."""

    signals: tuple[int, ...] = DEFAULT_SIGNALS
    most: int = 20  # -maxRequeues


def signal_numbers(names: str) -> tuple[int, ...]:
    """-requeueSignal's comma list (USR1,USR2; the SIG prefix optional; none: no signal) as
    signal numbers; ValueError naming what is not a signal it can take."""
    if names.strip().lower() == "none":
        return ()
    numbers = []
    for word in filter(None, (part.strip().upper() for part in names.split(","))):
        name = word if word.startswith("SIG") else f"SIG{word}"
        if name in NOT_REQUEUE:
            raise ValueError(f"{word} stops a run without requeueing it (or cannot be caught)")
        if name not in signal.Signals.__members__:
            raise ValueError(f"{word} is not a signal name (for example USR1, USR2, HUP)")
        numbers.append(int(signal.Signals[name]))
    if not numbers:
        raise ValueError("give signal names (for example USR1,USR2), or none")
    return tuple(dict.fromkeys(numbers))


def job_to_requeue(environ: Mapping[str, str]) -> str | None:
    """The job this process belongs to, as scontrol names it (ARRAYJOB_TASK for an array
    task, so that only the task is requeued), or None outside SLURM."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def restart_count(environ: Mapping[str, str]) -> int:
    """How many times SLURM has restarted this job (0 on its first run)."""
    text = environ.get("SLURM_RESTART_COUNT", "0")
    return int(text) if text.isdigit() else 0


def job_record(environ: Mapping[str, str]) -> dict:
    """What a run's records keep of its SLURM job for each part of the run (nothing outside
    SLURM), so that a user sees where a run was cut and restarted."""
    job = job_to_requeue(environ)
    return {"slurm_job": job, "slurm_restarts": restart_count(environ)} if job else {}


def after_save(requeue: Requeue, number: int, where: str, save: str, rank: int) -> str:
    """Requeue this SLURM job once the checkpoint is saved (rank 0 only); the line that says
    what happened. UsageError, saying the checkpoint is safe, when scontrol cannot do it."""
    said = f"=> {signal.Signals(number).name} {where}: checkpoint saved in {save}"
    resubmit = f"the checkpoint is saved: resubmit the job (its command, with -resume {save})"
    return requeued(requeue, said, save, rank, resubmit)


def before_training(requeue: Requeue, stopped: Stopped, save: str, rank: int) -> str:
    """A requeue signal before training began (nothing to save): the job requeued as
    after_save does, to start again; the line that says so."""
    name = signal.Signals(stopped.signal_number).name
    said = f"=> {name} {stopped}: nothing was saved"
    return requeued(requeue, said, save, rank, "nothing was saved yet: resubmit the job")


def requeued(requeue: Requeue, said: str, save: str, rank: int, resubmit: str) -> str:
    """The job requeued by rank 0 unless outside SLURM or past -maxRequeues; said, and
    what happened (resubmit: what to do if scontrol cannot requeue it)."""
    job, restarts = job_to_requeue(os.environ), restart_count(os.environ)
    if job is None:
        return f"{said}; not in a SLURM job, nothing to requeue: continue with -resume {save}"
    if restarts >= requeue.most:
        return (
            f"{said}; SLURM job {job} not requeued: it has restarted {restarts} times"
            f" (-maxRequeues {requeue.most}); resubmit it to go on (-resume {save})"
        )
    # A requeue ends the job's processes (SIGTERM, then SIGKILL): held from now on, so that
    # what is left is said and each exits by itself.
    ending = (signal.SIGTERM, *requeue.signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, ending)
    try:
        if rank == 0:
            scontrol_requeue(job, resubmit)
    except UsageError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ending)
        raise
    return f"{said}; SLURM job {job} requeued (restart {restarts + 1}), to continue from it"


def scontrol_requeue(job: str, resubmit: str) -> None:
    """`scontrol requeue job`, or UsageError saying why not and what to do (resubmit)."""
    command = shutil.which("scontrol")
    if command is None:
        raise UsageError(f"cannot requeue SLURM job {job}: scontrol is not on PATH; {resubmit}")
    try:
        done = subprocess.run(
            [command, "requeue", job], capture_output=True, text=True, timeout=SCONTROL_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"`scontrol requeue {job}` did not answer in {SCONTROL_SECONDS} s;"
                         f" {resubmit}") from None  # fmt: skip
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        raise UsageError(
            f"`scontrol requeue {job}` failed (exit {done.returncode}{why}); submit with"
            f" --requeue (and JobRequeue=1 in slurm.conf); {resubmit}"
        )
