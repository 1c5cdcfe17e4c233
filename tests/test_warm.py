"""The warm runner the end-to-end tests start scripts with behaves as a fresh `python script`."""

import os
import signal
import subprocess
import sys

import pytest
import warm

SCRIPT = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "flag": os.environ.get("WARM_FLAG"),
                  "path0": sys.path[0], "name": __name__}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    return str(path)


@pytest.mark.parametrize("status", ["0", "3"])
def test_a_script_sees_what_a_fresh_interpreter_gives_it(script, tmp_path, status):
    command = [sys.executable, script, status, "two words"]
    options = dict(
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "WARM_FLAG": "x"}
    )
    fresh, forked = subprocess.run(command, **options), warm.run(command, **options)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )
    assert forked.returncode == int(status) and '"flag": "x"' in forked.stdout


def test_an_uncaught_exception_is_a_traceback_and_status_1(tmp_path):
    path = tmp_path / "fails.py"
    path.write_text("raise ValueError('boom')\n")
    done = warm.run([sys.executable, str(path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback") and done.stderr.endswith("ValueError: boom\n")


def test_a_signal_reaches_the_scripts_handler_and_a_kill_is_a_negative_status(tmp_path):
    path = tmp_path / "waits.py"
    path.write_text(
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    for number, status in ((signal.SIGTERM, 7), (signal.SIGKILL, -signal.SIGKILL)):
        process = warm.start([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        process.send_signal(number)
        assert process.wait(timeout=30) == status


def test_python_c_and_other_commands_also_run(tmp_path):
    done = warm.run([sys.executable, "-c", "import sys; print(sys.argv)", "a"], capture_output=True,
              text=True)  # fmt: skip
    assert done.stdout == "['-c', 'a']\n"
    assert warm.run(["true"]).returncode == 0  # not Python: subprocess runs it


def test_a_loader_in_the_script_forks_as_in_a_fresh_process(tmp_path):
    done = warm.run([sys.executable, "-c", "import multiprocessing as m; print(m.get_start_method())"],
              capture_output=True, text=True)  # fmt: skip
    fresh = subprocess.run([sys.executable, "-c", "import multiprocessing as m; print(m.get_start_method())"],
                           capture_output=True, text=True)  # fmt: skip
    assert done.stdout == fresh.stdout
