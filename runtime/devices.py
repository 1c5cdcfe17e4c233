"""Where a run computes (-device auto | cuda | mps | cpu) and every choice that depends on
it: the device itself, its memory, its random generators, pinned memory, the process
group's backend, the default memory format, native bf16. CPU and MPS take CUDA's paths
wherever torch allows; what a device cannot do is refused here, in one line, at start."""

import os
import platform
import random
import time
from typing import NamedTuple

import torch

from errors import UsageError

DEVICES = ("auto", "cuda", "mps", "cpu")
# -memoryFormat: the layout of the model's weights and of the batches it is fed.
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
MEMORY_FORMAT_CHOICES = ("auto", *MEMORY_FORMATS)
# CPU capabilities (torch.backends.cpu.get_cpu_capability()) whose convolutions run faster
# on channels_last than on NCHW in fp32: measured 1.17x on AVX-512, 0.9x on AVX2 (ResNet-20).
CHANNELS_LAST_CPUS = ("AVX512",)


class DeviceError(UsageError):
    """A device that is not there, or cannot do what the flags ask."""


class Machine(NamedTuple):
    """What this machine offers: CUDA, MPS, the CPU's vector capability and native bf16."""

    cuda: bool
    mps: bool
    cpu_capability: str
    cpu_bf16: bool
    cuda_bf16: bool | None = None  # this process's GPU computes bf16 (None: ask when needed)

    @classmethod
    def here(cls) -> "Machine":
        """This machine, as torch sees it."""
        mps = getattr(torch.backends, "mps", None)
        return cls(
            cuda=torch.cuda.is_available(),
            mps=bool(mps and mps.is_available()),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            cpu_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        )


def device_type(requested: str, n_gpu: int, machine: Machine) -> str:
    """The device type of the run: -device, where auto is CUDA if present, then MPS, then
    the CPU (-nGPU 0 means the CPU, as in the Lua). A device asked for and absent, or
    asked for with flags it cannot honour, is a DeviceError."""
    if requested == "cuda" and not machine.cuda:
        raise DeviceError(
            "-device cuda but torch sees no CUDA device (torch.cuda.is_available() is"
            " False); use -device cpu, or check the driver and CUDA_VISIBLE_DEVICES"
        )
    if requested == "mps" and not machine.mps:
        raise DeviceError(
            "-device mps but torch sees no MPS device (an Apple silicon GPU with macOS 12.3"
            " or later); use -device cpu"
        )
    if requested == "cpu" and n_gpu > 1:
        raise DeviceError(
            f"-nGPU {n_gpu} with -device cpu: the CPU is one device (it uses all its cores);"
            " drop -nGPU, or use -device cuda"
        )
    if requested in ("cuda", "mps") and n_gpu == 0:
        raise DeviceError(f"-device {requested} with -nGPU 0 (the CPU): drop one of them")
    kind = requested if requested != "auto" else auto_device(n_gpu, machine)
    if kind == "mps" and n_gpu > 1:
        raise DeviceError(
            f"-nGPU {n_gpu} needs CUDA GPUs (DataParallel); MPS is one device: use -nGPU 1"
        )
    return kind


def auto_device(n_gpu: int, machine: Machine) -> str:
    """-device auto: CUDA if present, then MPS, then the CPU (always with -nGPU 0)."""
    if n_gpu > 0 and machine.cuda:
        return "cuda"
    if n_gpu > 0 and machine.mps:
        return "mps"
    return "cpu"


def fallback_line(kind: str, n_gpu: int) -> str | None:
    """What -device auto says when it found no CUDA GPU for a run that asked for one."""
    if n_gpu > 0 and kind == "cpu":
        return "=> No CUDA device found: running on the CPU"
    if kind == "mps":
        return "=> No CUDA device found: running on MPS (the Apple silicon GPU)"
    return None


def check_job(kind: str, world: int) -> None:
    """A job of several processes needs CUDA (nccl) or the CPU (gloo)."""
    if kind == "mps" and world > 1:
        raise DeviceError(
            f"a job of {world} processes cannot run on MPS (no process group backend);"
            " run one process, or add -device cpu"
        )


def backend(kind: str) -> str:
    """The process group backend of a job on this device type."""
    return "nccl" if kind == "cuda" else "gloo"


def memory_format(requested: str, kind: str, machine: Machine) -> tuple[str, str | None]:
    """(-memoryFormat to use, why, when auto chose it): channels_last on GPUs and on CPUs
    whose vector units make it faster, else contiguous (NCHW)."""
    if requested != "auto":
        return requested, None
    if kind != "cpu":
        return "channels_last", f"on {kind.upper()}"
    if machine.cpu_capability in CHANNELS_LAST_CPUS:
        return "channels_last", f"this CPU has {machine.cpu_capability}"
    return "contiguous", f"this CPU has {machine.cpu_capability}, no AVX-512"


def precision(requested: str, kind: str, machine: Machine) -> tuple[str, str | None]:
    """-precision, with auto resolved: bf16 where the device computes it natively (a CUDA
    GPU of Ampere or later, a CPU with AMX or AVX512-BF16), else single; and why, for auto."""
    if requested != "auto":
        return requested, None
    cuda = machine.cuda_bf16 if machine.cuda_bf16 is not None else kind == "cuda" and gpu_bf16()
    native = {"cuda": cuda, "cpu": machine.cpu_bf16}.get(kind, False)
    if native:
        return "bf16", f"this {'GPU' if kind == 'cuda' else 'CPU'} computes bf16 natively"
    if kind == "mps":
        return "single", "bf16 on MPS is not chosen for you"
    return "single", f"this {'GPU' if kind == 'cuda' else 'CPU'} has no native bf16"


def gpu_bf16() -> bool:
    """Whether this process's GPU (LOCAL_RANK's under torchrun) computes bf16 natively:
    compute capability 8 (Ampere) or later. Asked only for -precision auto on CUDA."""
    return torch.cuda.get_device_capability(int(os.environ.get("LOCAL_RANK", "0")))[0] >= 8


def precision_advice(precision: str, kind: str, machine: Machine) -> str | None:
    """One line on bf16 for a CPU run: emulated (slower) where -precision bf16 is asked
    for without native bf16; available (and faster) where single runs on a CPU that has it."""
    if kind != "cpu":
        return None
    if precision == "bf16" and not machine.cpu_bf16:
        return (
            "=> warning: this CPU has no native bf16 (AVX512-BF16 or AMX): -precision bf16"
            " is emulated here and 8-12x slower than -precision single"
        )
    if precision == "single" and machine.cpu_bf16:
        return (
            "=> This CPU computes bf16 natively (AVX512-BF16 or AMX): -precision bf16"
            " trains 1.5-2.8x faster than single on such CPUs (docs/performance.md)"
        )
    return None


def select_device(kind: str, n_gpu: int, local_rank: int, world: int) -> torch.device:
    """This process's device: under torchrun or srun its own GPU (local_rank), else the
    first; -nGPU more GPUs than visible is a DeviceError."""
    if kind == "cuda":
        if world > 1:
            return torch.device("cuda", local_rank)
        if n_gpu > torch.cuda.device_count():
            raise DeviceError(
                f"-nGPU {n_gpu} but only {torch.cuda.device_count()} GPUs are visible"
            )
        return torch.device("cuda")
    return torch.device(kind)


def memory(device: torch.device) -> int:
    """Bytes of memory the device computes in: a GPU's own, else the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory()
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a GPU's kernels run after the call that queued
    them): what a timing must do before it reads the clock."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def pins_memory(device: torch.device) -> bool:
    """Whether loaders put batches in pinned memory (an asynchronous copy to a CUDA GPU)."""
    return device.type == "cuda"


def rng_state(devices: list[torch.device]) -> dict:
    """The generators' states a resumed run restores: torch's CPU one, Python's, the CUDA
    one of each device this process computes on (in `devices`' order), and MPS's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    cuda = [device for device in devices if device.type == "cuda"]
    if cuda:
        state["cuda"] = [torch.cuda.get_rng_state(device) for device in cuda]
    if any(device.type == "mps" for device in devices):
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(saved, rank: int, devices: list[torch.device]) -> None:
    """Put back what rng_state() saved for this rank (saved: one state per rank, or one
    for all). What does not fit (more processes or GPUs than saved, fewer than saved)
    keeps its -manualSeed start, and is said once; a device's generators saved on another
    kind of device are left aside (the CPU's, which draw the data, are restored). Never
    an error."""
    states = saved if isinstance(saved, list) else [saved]
    if rank >= len(states):
        print(
            f"=> The checkpoint holds the random generators of {len(states)} processes:"
            " the others start from -manualSeed"
        )
        return
    state = states[rank]
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "mps" in state and any(device.type == "mps" for device in devices):
        torch.mps.set_rng_state(state["mps"])
    cuda = [device for device in devices if device.type == "cuda"]
    saved_cuda = state.get("cuda", [])
    for device, device_state in zip(cuda, saved_cuda, strict=False):
        torch.cuda.set_rng_state(device_state, device)
    if cuda and len(saved_cuda) != len(cuda):
        print(
            f"=> The checkpoint holds the random generators of {len(saved_cuda)} GPUs for"
            f" the {len(cuda)} used now: the others start from -manualSeed"
        )


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what platform says)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_record(device: torch.device) -> dict:
    """Where and when a part of a run ran, for its records: the start time (UTC), the CPU
    and its cores, the device (a GPU's name), torch's version."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "device": where,
        "torch": torch.__version__,
    }
