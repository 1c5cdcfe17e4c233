"""Process, device and precision set-up: the torchrun process group, the device, backend
and allocator settings, the parameter and autocast dtypes, torch.compile, RNG states and
stop signals. Each takes explicit arguments; plan.py reads the options."""

import contextlib
import ctypes
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from errors import Stopped, StoppedWaiting, UsageError
from runtime import devices, rendezvous, slurm

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
RENDEZVOUS_TIMEOUT = 300  # seconds the processes of a job wait for one another at start


class StartError(UsageError):
    """A start that cannot go on (bad combination found after parsing)."""


class Processes(NamedTuple):
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo group for small CPU messages (stop requests)


class Place(NamedTuple):
    """Where this process runs its part of the job: its device and every device it uses,
    the weights' dtype and autocast's (None: off), its place among the processes, and the
    stop requests it answers."""

    device: torch.device
    used: list
    dtypes: tuple
    processes: Processes
    stop: "StopRequest"


def quiet_thread_write_errors() -> Callable:
    """An OSError in a helper thread (TensorBoard's writer on a full disk) is not printed
    as a traceback: the main thread meets the same error at its next write and reports it
    in one line. Returns the hook it replaced."""
    default = threading.excepthook

    def hook(args) -> None:
        if not issubclass(args.exc_type, OSError):
            default(args)

    threading.excepthook = hook
    return default


class Job(NamedTuple):
    """Where this process is in its job, as its launcher says (one process without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    address: str | None = None  # rank 0's host and port, when the launcher is srun
    port: int | None = None
    launcher: str = ""
    agent_store: bool = False  # torchrun's workers: its agent's store is at address:port


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    depth, end = 0, len(nodelist)
    for position, char in enumerate(nodelist):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            end = position
            break
    return re.sub(r"\[([^]]*)\]", lambda group: re.split("[,-]", group[1])[0], nodelist[:end])


def env_int(environ, name: str, default: int | None = None, minimum: int = 0) -> int:
    """An integer environment variable set by a launcher, or StartError naming it."""
    text = environ.get(name)
    if text is None:
        if default is None:
            raise StartError(f"{name} is not set: start every process with srun or torchrun")
        return default
    try:
        value = int(text)
    except ValueError:
        raise StartError(f"{name}={text!r} is not a number: set it to an integer") from None
    if value < minimum:
        raise StartError(f"{name}={text} must be at least {minimum}")
    return value


def checked_rank(rank: int, world: int, names: tuple[str, str], environ) -> int:
    """rank, when it lies in [0, world); else StartError naming both variables."""
    if not 0 <= rank < world:
        rank_name, world_name = names
        raise StartError(
            f"{rank_name}={environ.get(rank_name)} is not a rank of {world_name}="
            f"{environ.get(world_name)} processes (0 to {world - 1}): start it with the"
            " launcher, not by hand"
        )
    return rank


def job_environment(environ=os.environ) -> Job:
    """This process's job: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else the tasks of an
    srun step (SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID; rank 0 on the step's
    first node, port from the job id unless MASTER_ADDR / MASTER_PORT say otherwise). A
    batch script's own process (SLURM_NTASKS but no step) is one process. A variable that
    is not a number, or a rank outside the job, is a StartError naming it."""
    if "WORLD_SIZE" in environ:
        world = env_int(environ, "WORLD_SIZE", minimum=1)
        rank = checked_rank(env_int(environ, "RANK", 0), world, ("RANK", "WORLD_SIZE"), environ)
        job = Job(rank, world, env_int(environ, "LOCAL_RANK", 0), launcher="torchrun")
        if world == 1:
            return job
        agent_store = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        if agent_store and "MASTER_ADDR" not in environ:
            raise StartError(
                "TORCHELASTIC_USE_AGENT_STORE=True but MASTER_ADDR is not set: torchrun sets"
                " both; start the job with torchrun, or unset TORCHELASTIC_USE_AGENT_STORE"
            )
        if agent_store:  # torchrun's workers: its agent's store, checked before use
            return job._replace(address=environ["MASTER_ADDR"],
                                port=master_port(environ, None), agent_store=True)  # fmt: skip
        if "MASTER_ADDR" not in environ:
            raise StartError(
                "WORLD_SIZE is set but MASTER_ADDR is not: start with torchrun, or"
                " set MASTER_ADDR and MASTER_PORT in every process"
            )
        return job._replace(
            address=environ["MASTER_ADDR"],
            port=master_port(environ, None),
            launcher="WORLD_SIZE / RANK / MASTER_ADDR",
        )
    tasks_name = "SLURM_STEP_NUM_TASKS"
    if tasks_name not in environ and "SLURM_STEP_ID" in environ:
        tasks_name = "SLURM_NTASKS"
    tasks = env_int(environ, tasks_name, 1, minimum=1)
    if tasks <= 1:
        return Job()
    rank = checked_rank(
        env_int(environ, "SLURM_PROCID"), tasks, ("SLURM_PROCID", tasks_name), environ
    )
    nodes = next(
        (
            environ[k]
            for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
            if environ.get(k)
        ),
        None,
    )
    address = environ.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
    if address is None:
        raise StartError(
            "srun started this job without a node list: set MASTER_ADDR to the host of task 0"
        )
    port = master_port(environ, 12000 + env_int(environ, "SLURM_JOB_ID", 0) % 20000)
    return Job(rank, tasks, env_int(environ, "SLURM_LOCALID", 0), address, port, "srun")


def master_port(environ, default: int | None) -> int:
    """MASTER_PORT, else default (None: it must be set), checked to be a port."""
    port = env_int(environ, "MASTER_PORT", default, minimum=1)
    if port > 65535:
        raise StartError(f"MASTER_PORT={port} is not a port (1 to 65535)")
    return port


def check_global_batch(batch_size: int, world: int) -> None:
    """-batchSize is the global batch: each of the job's processes takes an equal share."""
    if batch_size % world:
        raise StartError(
            f"-batchSize {batch_size} (the global batch) does not divide among {world}"
            f" processes; use a multiple of {world}"
        )


@contextlib.contextmanager
def process_group(kind: str, job: "Job", rendezvous_timeout: float, stop: "StopRequest"):
    """This process in its job's process group for the block (start_processes), which is
    left at the end, unless a stop request ended the block while a collective may wait
    for a peer (leaving would wait too)."""
    if job.world > 1:
        stop.doing = "waiting for the other processes of the job"
    processes = start_processes(kind, job, rendezvous_timeout)
    stop.doing, stop.processes = "starting", processes
    stopped = False
    try:
        yield processes
    except Stopped:
        stopped = True
        raise
    finally:
        if processes.world > 1 and not stopped:
            dist.destroy_process_group()


def left_a_process_group() -> bool:
    """Whether the run left its process group without destroying it (stopped while a
    collective may wait for a peer, process_group): torch 2.11's exit then waits for it."""
    return dist.is_available() and dist.is_initialized()


def in_a_job() -> bool:
    """Whether this process is one of several of a job (False when the launcher's
    variables are broken: that is reported as such)."""
    try:
        return job_environment().world > 1
    except StartError:
        return False


def start_processes(
    kind: str, job: Job | None = None, rendezvous_timeout: float = RENDEZVOUS_TIMEOUT
) -> Processes:
    """Join the process group of this job (torchrun's or srun's) on devices of `kind`:
    nccl with one GPU per process, gloo on CPUs. Alone (or in a job of one process):
    nothing to join. The processes meet within rendezvous_timeout seconds (torchrun's
    workers in its agent's store, which its own rendezvous set up)."""
    job = job or job_environment()
    if job.world <= 1:
        return Processes()
    on_gpus = kind == "cuda"
    if on_gpus:
        torch.cuda.set_device(job.local_rank)
    where = {"init_method": "env://"}
    if job.agent_store:
        rendezvous.check_agent_store(job.address, job.port, rendezvous_timeout)
    elif job.address is not None:
        store = rendezvous.meet(job.address, job.port, job.rank, job.world, rendezvous_timeout)
        where = {"store": store, "rank": job.rank, "world_size": job.world}
    # A peer that died makes collectives fail after this long instead of waiting forever.
    dist.init_process_group(devices.backend(kind), timeout=timedelta(minutes=5), **where)
    control = dist.new_group(backend="gloo") if on_gpus else None
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - only rank 0 prints
    else:
        device = "GPU" if on_gpus else "CPU"
        print(
            f"=> Distributed: {job.world} processes, one {device} each ({dist.get_backend()},"
            f" started by {job.launcher})"
        )
    return Processes(dist.get_rank(), job.world, job.local_rank, control)


def any_process(flag: bool, processes: Processes, waiting: bool = False) -> bool:
    """Whether flag is true in any process of the run (a small CPU all-reduce). waiting:
    the others may be long in coming (one process prepares the data while they wait), so
    the wait is in short Python steps, in which a stop signal is handled."""
    if processes.world == 1:
        return flag
    value = torch.tensor([int(flag)])
    work = dist.all_reduce(value, op=dist.ReduceOp.MAX, group=processes.control, async_op=True)
    while waiting and not work.is_completed():
        time.sleep(rendezvous.POLL_SECONDS)
    work.wait()
    return bool(value.item())


def every_process(flag: bool, processes: Processes, waiting: bool = False) -> bool:
    """Whether flag is true in every process of the run (a small CPU all-reduce)."""
    return not any_process(not flag, processes, waiting)


def all_gathered(value, processes: Processes) -> list:
    """value from every process, by rank (small picklable values)."""
    if processes.world == 1:
        return [value]
    values = [None] * processes.world
    dist.all_gather_object(values, value, group=processes.control)
    return values


@contextlib.contextmanager
def restored_settings(environ=os.environ):
    """For the block: what a run sets process-wide is put back after it: cuDNN's and
    torch's determinism flags, cuBLAS's workspace variable, the global random generator
    (-manualSeed), sys.stdout (rank > 0 prints nowhere). (glibc's allocator setting,
    -hostAllocator, stays: it cannot be undone and changes no result.)"""
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.get_rng_state(), sys.stdout)  # fmt: skip
    try:
        yield
    finally:
        benchmark, deterministic, algorithms, warn_only, cublas, rng, stdout = saved
        cudnn.benchmark, cudnn.deterministic = benchmark, deterministic
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        if cublas is None:
            environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        torch.set_rng_state(rng)
        if sys.stdout is not stdout:  # rank > 0's /dev/null
            sys.stdout.close()
            sys.stdout = stdout


def configure_backends(cudnn_mode: str, environ=os.environ) -> None:
    """The Lua's -cudnn fastest | default | deterministic. Deterministic also makes cuBLAS
    deterministic: its workspace setting is read when CUDA starts, so this runs before."""
    if cudnn_mode == "fastest":
        torch.backends.cudnn.benchmark = True
    elif cudnn_mode == "deterministic":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # a user's own value stays


def configure_host_allocator(mode: str) -> bool:
    """-hostAllocator cache: glibc keeps freed memory for reuse; True if it was set."""
    if mode != "cache" or platform.libc_ver()[0] != "glibc":
        return False
    # By default glibc maps each large block (a batch's activations) on its own and unmaps
    # it on free, so every step faults its activations back in as fresh zeroed pages: about
    # a fifth of a CPU training step. From the heap, with no trimming, they are reused.
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def precision_settings(
    precision: str, device: torch.device
) -> tuple[torch.dtype, torch.dtype | None]:
    """(parameter dtype, autocast dtype) for -precision."""
    if precision == "half" and device.type == "cpu":
        raise StartError(
            "-precision half needs a CUDA or MPS device; on the CPU use bf16 or single"
        )
    return {
        "single": (torch.float32, None),
        "double": (torch.float64, None),
        "half": (torch.float32, torch.float16),
        "bf16": (torch.float32, torch.bfloat16),
    }[precision]


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile, or a StartError where this platform cannot compile."""
    compilers = (os.environ.get("CXX"), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(c and shutil.which(c) for c in compilers):
        raise StartError(
            "-compile true needs a C++ compiler on the CPU (apt-get install g++);"
            " or run without -compile"
        )
    print("=> Compiling the model with torch.compile (the first iterations are slow)")
    return torch.compile(model)


@contextlib.contextmanager
def stop_requests(requeue_signals: tuple[int, ...] = ()):
    """A StopRequest handling SIGTERM / SIGINT (and the signals that ask for a requeue) for
    the block, and helper threads' write errors left to the main thread; the handlers they
    replaced are back after it."""
    stop = StopRequest()
    stop.install(requeue_signals)  # before any work: a stop request never ends in a traceback
    thread_hook = quiet_thread_write_errors()
    try:
        yield stop
    finally:
        stop.restore()
        threading.excepthook = thread_hook


class StopRequest:
    """SIGTERM / SIGINT handling from the start of a run. Before training (building the
    image index, loading, testing) a request stops at once (Stopped). Once `deferred` is
    set, it is remembered so that training (or testing) saves and stops between
    iterations; in a distributed run, every process stops at the same iteration. Ctrl-C pressed
    again ends the process at once; a repeated SIGTERM or requeue signal does not (a scheduler
    signals a job's step and srun forwards it again, as SLURM's pre-emption does, and its
    SIGKILL follows if the process does not stop)."""

    def __init__(self, processes: Processes | None = None):
        self.signal_number = None
        self.processes = processes or Processes()
        self.deferred = False
        self.waiting = False  # set while training waits for a batch (epochs.AwaitedBatches)
        self.doing = "starting"  # what a stop before training interrupts, for the message
        self.previous = {}  # the handlers install replaced, by signal

    def requested(self) -> bool:
        """Whether this process was asked to stop."""
        return self.signal_number is not None

    def __call__(self) -> bool:
        """Whether any process was asked to stop. In a distributed run every process asks
        at the same point (a small all-reduce), so that all stop together."""
        stopping = any_process(self.requested(), self.processes)
        if stopping and self.signal_number is None:
            self.signal_number = signal.SIGTERM  # another process got the signal
        return stopping

    def install(self, requeue_signals: tuple[int, ...] = ()) -> None:
        """Catch SIGTERM, SIGINT and the requeue signals from now on (until restore)."""
        numbers = (signal.SIGTERM, signal.SIGINT, *requeue_signals)
        self.previous = {n: signal.signal(n, self.handle) for n in numbers}

    @staticmethod
    def release_held() -> None:
        """Let through the requeue signals main.py holds pending while it starts: handled
        now if asked for (a requeue before training), else acted on by default, as before."""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, slurm.DEFAULT_SIGNALS)

    def restore(self) -> None:
        """Put back the handlers that install replaced."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number, _frame) -> None:
        if self.signal_number is not None and number != signal.SIGINT:
            return  # the stop under way goes on (the save is not cut short)
        if self.signal_number is not None:  # Ctrl-C twice: end now, by the signal itself
            name = signal.Signals(number).name
            os.write(2, f"\n=> {name} again: stopping at once, without saving\n".encode())
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        self.signal_number = number
        if not self.deferred:
            raise Stopped(number, self.doing)
        if self.waiting:  # no step is half done: stop now, not after a batch that may not come
            raise StoppedWaiting(number)
