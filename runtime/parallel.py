"""How a run spreads over devices and processes: DataParallel replicas in one process
(-nGPU N, the Lua's way) or one DistributedDataParallel process per device (torchrun,
srun), with -syncBN and -compile; and what the processes of a run share: BatchNorm
buffers before validation, and turns at preparing the data. Each takes explicit
arguments; main.py reads the options."""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from errors import PeerFailed
from runtime import launch, sync_batchnorm
from runtime.launch import Processes, StartError


class Autocast(nn.Module):
    """The wrapped module run under autocast to `dtype`. DataParallel runs each replica in
    a thread of its own, which inherits whether autocast is on but not its dtype (a new
    thread's CUDA autocast is float16): autocast entered inside the replicated module keeps
    the dtype asked for (bf16)."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.device_type, self.dtype = device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def uses_data_parallel(device: torch.device, n_gpu: int, world: int) -> bool:
    """Whether this process replicates the model over n_gpu GPUs (DataParallel)."""
    return world == 1 and device.type == "cuda" and n_gpu > 1


def check_compile(compile_model: bool, device: torch.device, n_gpu: int, world: int) -> None:
    """-compile true with DataParallel is refused before any work: Dynamo does not trace
    into DataParallel's replicas (no speed-up), and a compiled model cannot be replicated."""
    if compile_model and uses_data_parallel(device, n_gpu, world):
        raise StartError(
            f"-compile true does not work with -nGPU {n_gpu} in one process (DataParallel);"
            f" run one process per GPU instead: torchrun --nproc-per-node {n_gpu} main.py"
            " ... -compile true"
        )


def spread_model(
    model: nn.Module,
    device: torch.device,
    *,
    n_gpu: int = 1,
    world: int = 1,
    autocast_dtype: torch.dtype | None = None,
    sync_bn: bool = False,
    compile_model: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """(model to train, model to evaluate) for a model already on its device: under
    torchrun, DistributedDataParallel (after -syncBN) to train and the bare model to
    evaluate (DistributedDataParallel's forward communicates, while processes evaluate
    different numbers of images); with -nGPU N > 1, DataParallel for both; then -compile."""
    if world > 1:
        if sync_bn:
            print("=> Batch normalisation over the global batch (-syncBN)")
            model = sync_batchnorm.convert(model)
        ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if compile_model:  # compiled whole, DDP's buckets still overlap the backward pass
            return launch.compile_model(trained, device), torch.compile(model)
        return trained, model
    if uses_data_parallel(device, n_gpu, world):  # -compile refused before (check_compile)
        if autocast_dtype is not None:
            model = Autocast(model, device.type, autocast_dtype)
        model = nn.DataParallel(model, device_ids=list(range(n_gpu)))
        return model, model
    if compile_model:
        model = launch.compile_model(model, device)
    return model, model


def devices_used(device: torch.device, n_gpu: int, world: int) -> list[torch.device]:
    """The devices this process computes on: n_gpu GPUs with DataParallel, else one."""
    if uses_data_parallel(device, n_gpu, world):
        return [torch.device("cuda", index) for index in range(n_gpu)]
    return [device]


def share_buffers(model: nn.Module, processes: Processes) -> None:
    """Every process takes rank 0's buffers (BatchNorm running statistics), which drift
    apart between processes while training, so that every process evaluates the model
    that rank 0 saves."""
    if processes.world == 1:
        return
    handles = [dist.broadcast(buffer, src=0, async_op=True) for buffer in model.buffers()]
    for handle in handles:
        handle.wait()


def in_turns(processes: Processes, work: Callable, every_process=launch.every_process):
    """work() in every process: first in rank 0, then in the first process of each other
    node, then in the others; so that one process downloads, unpacks or indexes the data
    into -gen while the others wait, then reads what is there (also when -gen is shared
    between nodes). An error in one process ends them all: itself with its error, the
    others with PeerFailed."""
    if processes.world == 1:
        return work()
    turn = 0 if processes.rank == 0 else 1 if processes.local_rank == 0 else 2
    result, failure = None, None
    for current in range(3):
        if current == turn:
            try:
                result = work()
            except Exception as exc:  # every process must learn of it before any stops
                failure = exc
        if not every_process(failure is None, processes, waiting=True):
            if failure is not None:
                raise failure
            raise PeerFailed("another process of this job could not load the data", processes.rank)
    return result
