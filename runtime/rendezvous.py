"""How the processes of a job meet before they form a process group: at rank 0's address,
within a time limit, in Python steps short enough that a stop signal is handled at once,
and with an error that names who did not come. (torchrun's workers meet in torchrun's
own store, which its agent set up after its own rendezvous.)"""

import socket
import threading
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
    advice = (
        "is rank 0 running, and are MASTER_ADDR / MASTER_PORT (or the node list) the same in"
        " every process?"
    )
    answered(address, port, timeout, deadline, advice)
    return client_store(address, port, timeout, deadline)


def check_agent_store(address: str, port: int, timeout: float) -> None:
    """That torchrun's agent store answers at address:port as a store within timeout seconds
    (torch's own connection would wait minutes, deaf to signals, where nothing or something
    else answers: variables set by hand rather than by torchrun)."""
    advice = (
        "TORCHELASTIC_USE_AGENT_STORE=True means torchrun's agent listens there; start the job"
        " with torchrun, or unset TORCHELASTIC_USE_AGENT_STORE"
    )
    deadline = time.monotonic() + timeout
    answered(address, port, timeout, deadline, advice)
    client_store(address, port, timeout, deadline)


def answered(address: str, port: int, timeout: float, deadline: float, advice: str) -> None:
    """Wait until address:port accepts a connection, or raise RendezvousError with advice
    once the deadline (of a -rendezvousTimeout of timeout seconds) has passed."""
    while not answers(address, port):
        if time.monotonic() > deadline:
            raise RendezvousError(
                f"nothing answered at {address}:{port} within {timeout:g} s"
                f" (-rendezvousTimeout): {advice}"
            )
        time.sleep(POLL_SECONDS)


def client_store(address: str, port: int, timeout: float, deadline: float) -> dist.TCPStore:
    """A client of the store at address:port, made in a helper thread: torch's client waits
    in C++, past its own timeout and deaf to signals, at a port that answers without being a
    store (another service on MASTER_PORT); here the wait ends at the deadline, and a stop
    request is handled meanwhile (the thread, stuck in C++, is abandoned)."""
    made = {}

    def connect() -> None:
        try:
            made["store"] = dist.TCPStore(
                address, port, is_master=False, timeout=timedelta(seconds=timeout)
            )
        except Exception as exc:  # noqa: BLE001 - said below, in the main thread
            made["error"] = exc

    thread = threading.Thread(target=connect, name="store-client", daemon=True)
    thread.start()
    while thread.is_alive():
        if time.monotonic() > deadline:
            made["error"] = TimeoutError(f"no answer as a store within {timeout:g} s")
            break
        thread.join(POLL_SECONDS)
    if "error" in made:
        raise RendezvousError(
            f"{address}:{port} answers, but not as rank 0's store ({short_reason(made['error'])};"
            " -rendezvousTimeout): another service may hold that port; set MASTER_PORT to a"
            " free port in every process"
        )
    return made["store"]


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
