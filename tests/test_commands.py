"""Data commands (`pipe:` sources) run in a session of their own and never outlive a stop,
even one that arrives while the command is starting."""

import os
import signal
import subprocess

import pytest

import errors
from datasets import commands


def signalled_while_starting(monkeypatch, number: int) -> list[int]:
    """Make every Popen deliver `number` to this process just before it returns, as a
    scheduler's signal may arrive before the caller holds the new process; the pids started."""
    started, popen = [], subprocess.Popen

    def starting(*args, **kwargs):
        process = popen(*args, **kwargs)
        started.append(process.pid)
        signal.raise_signal(number)
        return process

    monkeypatch.setattr(subprocess, "Popen", starting)
    return started


def running(pid: int) -> bool:
    """Whether pid is still a process (running, or a child not yet reaped)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_command_starts_ends_the_command(number, monkeypatch):
    started = signalled_while_starting(monkeypatch, number)
    with pytest.raises(errors.Stopped), errors.stops_raise("fetching"):
        commands.start_session("exec sleep 600", stdout=subprocess.DEVNULL)
    assert len(started) == 1 and not running(started[0]), "the command outlived the stop"


def test_a_stop_kept_for_later_leaves_the_command_running(monkeypatch):
    """A handler that only records the stop (training saves at its next step) gets it, and
    the command goes on to be read."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: received.append(number))
    try:
        signalled_while_starting(monkeypatch, signal.SIGTERM)
        process = commands.start_session("echo fetched", stdout=subprocess.PIPE)
        assert process.communicate()[0] == b"fetched\n" and process.returncode == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
