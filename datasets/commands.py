"""Shell commands that fetch or stream data (`pipe:` shard sources and listings): each runs in
a session of its own so that its whole process group can be ended, and is ended whenever
the one waiting on it stops, even if the stop came while the command was starting."""

import contextlib
import os
import signal
import subprocess
import threading

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_session(command: str, **streams) -> subprocess.Popen:
    """Start command (a shell line) in a session of its own with the given streams. A stop
    signal that arrives while it starts is held until the command has a process to end: it
    is then handled, and if its handler raises (a stop), the command is ended first."""
    if threading.current_thread() is not threading.main_thread():  # no handler runs here
        return subprocess.Popen(command, shell=True, start_new_session=True, **streams)
    held = []

    def hold(number, _frame) -> None:
        held.append(number)

    previous = {number: signal.signal(number, hold) for number in STOP_SIGNALS}
    try:
        process = subprocess.Popen(command, shell=True, start_new_session=True, **streams)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    try:
        for number in held:  # the handlers now in place decide: stop at once, or later
            if signal.getsignal(number) == signal.SIG_DFL:  # the signal ends this process
                end_group(process)
            signal.raise_signal(number)
    except BaseException:
        end_group(process)
        raise
    return process


def end_group(process: subprocess.Popen) -> None:
    """Kill a command's whole process group (the shell and what it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stderr is not None:
        process.stderr.close()


@contextlib.contextmanager
def ended_with_worker(process: subprocess.Popen):
    """In a loader worker, a SIGTERM (the loader ending its workers, say after a stop
    request) ends the command's process group before the worker: in a session of its own,
    the command would otherwise outlive it. Elsewhere (the main process) the run's own
    stop handling applies and interrupts the wait."""
    if torch.utils.data.get_worker_info() is None:
        yield
        return

    def ended(number, _frame) -> None:
        end_group(process)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)

    previous = signal.signal(signal.SIGTERM, ended)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
