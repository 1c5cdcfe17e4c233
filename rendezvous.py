"""How the processes of a job meet before they form a process group: at rank 0's address,
within a time limit, in Python steps short enough that a stop signal is handled at once,
and with an error that names who did not come. (torchrun's workers meet in torchrun's
own store, which its agent set up after its own rendezvous.)"""

import socket
import time
from datetime import timedelta

import torch.distributed as dist

from errors import UsageError

POLL_SECONDS = 0.05  # between two looks at who has arrived: a stop request waits no longer
CONNECT_SECONDS = 1.0  # one attempt to reach rank 0's port
PREFIX = "resnet-rendezvous/"


class RendezvousError(UsageError):
    """The processes did not all meet in time, or rank 0's port cannot be used."""


def meet(address: str, port: int, rank: int, world: int, timeout: float) -> dist.Store:
    """The store every process of the job shares once all `world` ranks have arrived at
    rank 0's address:port, or RendezvousError after `timeout` seconds naming the ranks
    missing (rank 0) or the address that never answered (the others)."""
    deadline = time.monotonic() + timeout
    if rank == 0:
        store = host_store(address, port, timeout)
    else:
        store = join_store(address, port, timeout, deadline)
    store.set(f"{PREFIX}joined/{rank}", "1")
    keys = [f"{PREFIX}joined/{other}" for other in range(world)]
    while not store.check(keys):
        if time.monotonic() > deadline:
            missing = [other for other, key in enumerate(keys) if not store.check([key])]
            raise RendezvousError(
                f"rank {rank} waited {timeout:g} s (-rendezvousTimeout) at {address}:{port} for"
                f" rank{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} of {world}:"
                " start every process of the job (the same srun step), or raise"
                " -rendezvousTimeout"
            )
        time.sleep(POLL_SECONDS)
    return dist.PrefixStore(f"{PREFIX}group/", store)


def host_store(address: str, port: int, timeout: float) -> dist.TCPStore:
    """Rank 0's store, listening on port."""
    try:
        return dist.TCPStore(
            address,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=timeout),
        )
    except dist.DistNetworkError as exc:
        raise RendezvousError(
            f"rank 0 cannot listen on port {port} ({short_reason(exc)}): another job may hold"
            " it; set MASTER_PORT to a free port in every process"
        ) from None


def join_store(address: str, port: int, timeout: float, deadline: float) -> dist.TCPStore:
    """A client of rank 0's store, once its port answers. Python's socket asks first: a
    failed TCPStore connection prints a C++ stack, and cannot be interrupted."""
    while not answers(address, port):
        if time.monotonic() > deadline:
            raise RendezvousError(
                f"nothing answered at {address}:{port} within {timeout:g} s"
                " (-rendezvousTimeout): is rank 0 running, and are MASTER_ADDR / MASTER_PORT"
                " (or the node list) the same in every process?"
            )
        time.sleep(POLL_SECONDS)
    return dist.TCPStore(address, port, is_master=False, timeout=timedelta(seconds=timeout))


def answers(address: str, port: int) -> bool:
    """Whether a TCP connection to address:port is accepted (a name that does not resolve:
    not yet, as with a node whose name service is late)."""
    try:
        with socket.create_connection((address, port), timeout=CONNECT_SECONDS):
            return True
    except OSError:
        return False


def short_reason(exc: Exception) -> str:
    """The first line of a c10d error, without its C++ frames."""
    return str(exc).strip().splitlines()[0][:200]
