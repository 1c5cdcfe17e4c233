"""Run a function in several processes joined by a gloo process group, as torchrun's
workers are on CPUs: what multi-GPU runs do between processes, without GPUs."""

import io
import multiprocessing
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from runtime.launch import Processes

GROUP_TIMEOUT = 60  # seconds: a collective one rank never joins fails, not hangs the suite


def as_bytes(value) -> bytes:
    """value serialised whole: tensors put on a queue as they are would be shared through
    this process's memory, which is gone once it has ended."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def rank_main(function, rank: int, world: int, store: str, args: tuple, results) -> None:
    """One rank: join the group, run function(processes, *args), report its result."""
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=GROUP_TIMEOUT))  # fmt: skip
        processes = Processes(rank, world, rank, None)
        results.put((rank, "ok", as_bytes(function(processes, *args))))
    except BaseException:  # the parent reports it
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(function, world: int, folder, *args) -> list:
    """function(processes, *args) in `world` spawned processes; their results by rank.
    function must be importable (defined at a module's top level)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch"])  # torch imported once, not in every rank
    results = context.Queue()
    store = os.path.join(folder, f"store-{function.__name__}")
    workers = [context.Process(target=rank_main, args=(function, rank, world, store, args, results))
               for rank in range(world)]  # fmt: skip
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=GROUP_TIMEOUT * 3) for _ in workers]
    for worker in workers:
        worker.join(timeout=GROUP_TIMEOUT)
    reports.sort(key=lambda report: report[0])
    errors = [text for _, status, text in reports if status == "error"]
    assert not errors, errors[0]
    return [torch.load(io.BytesIO(value), weights_only=False) for _, _, value in reports]
