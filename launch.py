"""Process, device and precision set-up: the torchrun process group, the device, backend
and allocator settings, the parameter and autocast dtypes, torch.compile, RNG states and
stop signals. Each takes explicit arguments; main.py reads the options."""

import ctypes
import os
import platform
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


class StartError(ValueError):
    """A start that cannot go on (bad combination found after parsing)."""


class Processes(NamedTuple):
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo group for small CPU messages (stop requests)


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


def torchrun_world() -> int:
    """The number of processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def uses_gpus(n_gpu: int) -> bool:
    """Whether this run computes on CUDA: asked for with -nGPU and present."""
    return n_gpu > 0 and torch.cuda.is_available()


def start_processes(n_gpu: int) -> Processes:
    """Join the process group torchrun describes in the environment: nccl with one GPU per
    process, gloo on CPUs. Without torchrun (or WORLD_SIZE 1): one process."""
    world = torchrun_world()
    if world <= 1:
        return Processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpus = uses_gpus(n_gpu)
    if on_gpus:
        torch.cuda.set_device(local_rank)
    # A peer that died makes collectives fail after this long instead of waiting forever.
    dist.init_process_group("nccl" if on_gpus else "gloo", timeout=timedelta(minutes=5))
    control = dist.new_group(backend="gloo") if on_gpus else None
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - only rank 0 prints
    else:
        where = "GPU" if on_gpus else "CPU"
        print(f"=> Distributed: {world} processes, one {where} each ({dist.get_backend()})")
    return Processes(dist.get_rank(), world, local_rank, control)


def select_device(n_gpu: int, processes: Processes | None = None) -> torch.device:
    """CUDA when asked for and present, else the CPU (said once); under torchrun, the
    process's own GPU."""
    if processes is not None and processes.world > 1:
        if uses_gpus(n_gpu):
            return torch.device("cuda", processes.local_rank)
        return torch.device("cpu")
    if uses_gpus(n_gpu):
        if n_gpu > torch.cuda.device_count():
            raise StartError(f"-nGPU {n_gpu} but only {torch.cuda.device_count()} GPUs are visible")
        return torch.device("cuda")
    if n_gpu > 0:
        print("=> No CUDA device found: running on the CPU")
    return torch.device("cpu")


def configure_backends(cudnn_mode: str) -> None:
    """The Lua's -cudnn fastest | default | deterministic."""
    if cudnn_mode == "fastest":
        torch.backends.cudnn.benchmark = True
    elif cudnn_mode == "deterministic":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


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
    if precision == "half" and device.type != "cuda":
        raise StartError("-precision half needs a CUDA device; on the CPU use bf16 or single")
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


def rng_state() -> dict:
    """The generators' states a resumed run restores (torch CPU, CUDA, Python)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what rng_state() saved (parts absent on this machine are skipped)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Stopped(Exception):
    """SIGTERM / SIGINT before training started, or while only testing: nothing to save."""

    def __init__(self, signal_number: int, doing: str):
        super().__init__(f"while {doing}")
        self.signal_number = signal_number


class StopRequest:
    """SIGTERM / SIGINT handling from the start of a run. Before training (building the
    image index, loading, testing) a request stops at once (Stopped). Once `deferred` is
    set, it is remembered so that training saves and stops between iterations; in a
    distributed run, every process stops at the same iteration (agreed). A second request
    ends the process at once."""

    def __init__(self, processes: Processes | None = None):
        self.signal_number = None
        self.processes = processes or Processes()
        self.deferred = False
        self.doing = "starting"  # what a stop before training interrupts, for the message
        self.previous = {}  # the handlers install replaced, by signal

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a small all-reduce when distributed)."""
        if self.processes.world == 1:
            return self()
        flag = torch.tensor([int(self())])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.processes.control)
        stopping = bool(flag.item())
        if stopping and self.signal_number is None:
            self.signal_number = signal.SIGTERM  # another process got the signal
        return stopping

    def install(self) -> None:
        """Catch SIGTERM and SIGINT from now on (until restore)."""
        self.previous = {n: signal.signal(n, self.handle) for n in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        """Put back the handlers that install replaced."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number, _frame) -> None:
        if self.signal_number is not None:  # asked twice: end now, by the signal itself
            name = signal.Signals(number).name
            os.write(2, f"\n=> {name} again: stopping at once, without saving\n".encode())
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        self.signal_number = number
        if not self.deferred:
            raise Stopped(number, self.doing)

    def __call__(self) -> bool:
        return self.signal_number is not None
