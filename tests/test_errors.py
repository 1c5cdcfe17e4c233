"""Errors by type: the user's input is one line and exit 2; any other error is a bug and
shows its traceback with a line asking to report it."""

import signal

import pytest

import errors
import main
import opts as options
from run import plan


def test_an_unknown_value_names_the_options_and_the_closest_one():
    with pytest.raises(errors.UsageError) as refused:
        plan.parse(["-dataset", "cifar", "-nEpochs", "1"])
    assert str(refused.value) == (
        "unknown -dataset cifar (options: imagenet, cifar10, cifar100, fashionmnist);"
        " did you mean cifar10?"
    )
    with pytest.raises(errors.UsageError) as refused:
        plan.parse(["-dataset", "cifar10", "-precision", "int8"])
    assert (
        str(refused.value) == "unknown -precision int8 (options: single, double, half, bf16, auto)"
    )


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (errors.UsageError("-x is bad"), 2, "error: -x is bad"),
        (errors.Stopped(signal.SIGTERM, "loading"), 143, "=> Stopped by SIGTERM while loading;"),
        (errors.PeerFailed("rank 1 failed"), 1, "error: rank 1 failed"),
        (OSError(28, "No space left on device", "/x/model_1.pth"), 1, "error: no space left"),
        (RuntimeError("DataLoader worker (pid 7) is killed"), 1, "error: a data loader worker"),
    ],
)
def test_each_kind_of_failure_is_one_line_with_its_exit_status(exc, status, line, capsys):
    assert errors.exit_status(exc, distributed=False) == status
    err = capsys.readouterr().err
    assert err.strip().startswith(line) and "Traceback" not in err


def test_a_peer_that_is_not_rank_0_ends_quietly(capsys):
    assert errors.exit_status(errors.PeerFailed("rank 1 failed", rank=1), distributed=True) == 1
    assert capsys.readouterr().err == ""


def test_a_bug_shows_its_traceback_and_asks_to_report_it(monkeypatch, capsys):
    def broken(argv, names):
        raise ValueError("an index is off by one")

    monkeypatch.setattr(options, "parse", broken)
    assert main.main(["-dataset", "cifar10"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an index is off by one" in err
    assert err.endswith(f"error: {errors.REPORT_BUGS}\n")


def test_a_runtime_error_of_another_process_is_not_a_bug_in_a_distributed_job(capsys):
    assert errors.exit_status(RuntimeError("Connection closed by peer"), distributed=True) == 1
    assert "another process of this distributed job failed" in capsys.readouterr().err
    assert errors.exit_status(RuntimeError("Connection closed by peer"), distributed=False) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: Connection closed by peer" in err and errors.REPORT_BUGS in err
