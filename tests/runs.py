"""main.py and the scripts as the tests run them: in this process, through `main.main(argv)`
and the scripts' `__main__`, which put back what they change; or as a process of its own
(`python main.py ...`) where the test kills it, signals it from outside, or needs a job of
several processes.

An in-process run returns a `subprocess.CompletedProcess` as `subprocess.run(...,
capture_output=True, text=True)` would: what the run wrote to sys.stdout and sys.stderr, and
to the file descriptors 1 and 2 (torch's C++ warnings, loader workers), read back with
universal newlines; its exit status.
"""

import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import tempfile

from conftest import TIMEOUT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


class LineWatcher(io.TextIOBase):
    """A text stream that writes through to `target` and calls `on_line(line)` with each whole
    line written, so that a test can act (send a signal) the moment a line is printed."""

    def __init__(self, target, on_line):
        self.target, self.on_line, self.pending = target, on_line, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.target.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.on_line(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def reconfigure(self, **options) -> None:
        self.target.reconfigure(**options)

    @property
    def errors(self):
        return self.target.errors

    @property
    def line_buffering(self):
        return self.target.line_buffering


def text_stream(fd: int) -> io.TextIOWrapper:
    """A sys.stdout-like stream on descriptor fd that writes each line through at once."""
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True, write_through=True)


class Output:
    """What a block wrote to stdout and stderr, once it has ended."""

    stdout = stderr = None


@contextlib.contextmanager
def captured(on_line=None):
    """For the block, descriptors 1 and 2 and sys.stdout / sys.stderr write to two temporary
    files; yields an Output that holds their text once the block has ended."""
    output = Output()
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    streams, saved = (sys.stdout, sys.stderr), [os.dup(1), os.dup(2)]
    for stream in streams:
        stream.flush()
    try:
        for fd, file in zip((1, 2), files, strict=True):
            os.dup2(file.fileno(), fd)
        sys.stdout, sys.stderr = text_stream(1), text_stream(2)
        if on_line:
            sys.stdout = LineWatcher(sys.stdout, on_line)
        yield output
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        output.stdout, output.stderr = (read_text(file) for file in files)
        for file in files:
            file.close()


def read_text(file) -> str:
    """All that was written to the temporary file, decoded as subprocess's text=True does."""
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read()), encoding="utf-8").read()


@contextlib.contextmanager
def environment(env, cwd):
    """For the block, os.environ is env (when given) and the working folder is cwd."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(cwd or saved_cwd)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def exit_code(stop: SystemExit) -> int:
    """The exit status of SystemExit(code), as the interpreter computes it."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code & 0xFF
    print(stop.code, file=sys.stderr)
    return 1


def in_process(call, args, env=None, cwd=None, on_line=None) -> subprocess.CompletedProcess:
    """call() in this process with its output captured, as a finished process."""
    with environment(env, cwd), captured(on_line) as output:
        try:
            status = call()
        except SystemExit as stop:
            status = exit_code(stop)
    return subprocess.CompletedProcess(args, status or 0, output.stdout, output.stderr)


def main_run(argv, env=None, cwd=None, on_line=None) -> subprocess.CompletedProcess:
    """`python main.py argv`, run in this process by main.main (on_line: called with each
    line the run prints, as it prints it)."""
    import main

    argv = [str(word) for word in argv]
    return in_process(lambda: main.main(argv), [MAIN, *argv], env, cwd, on_line)


def script_run(script, argv, env=None, cwd=None) -> subprocess.CompletedProcess:
    """`python script argv`, run in this process as its __main__."""
    assert os.path.abspath(script) != MAIN, "main_run runs main.py (its __main__ sets signals)"
    argv = [str(word) for word in argv]

    def call():
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = [str(script), *argv]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path

    return in_process(call, [str(script), *argv], env, cwd)


def start_main(argv, env=None, **popen) -> subprocess.Popen:
    """`python main.py argv` as a process of its own (text output)."""
    command = [sys.executable, MAIN, *[str(word) for word in argv]]
    return subprocess.Popen(command, env=env, text=True, **popen)


def main_process(argv, env=None) -> subprocess.CompletedProcess:
    """`python main.py argv` as a process of its own, run to its end."""
    return process_run([sys.executable, MAIN, *argv], env=env)


def process_run(command, env=None, cwd=None) -> subprocess.CompletedProcess:
    """subprocess.run of command with its text output, within the tests' time limit."""
    command = [str(word) for word in command]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def stopped_and_resumed(argv_of, stop_at: str, folder) -> tuple[dict, dict]:
    """The last model file's weights of a whole run, and of a run stopped by SIGTERM at its
    first output line starting with stop_at and then resumed: argv_of(save, gen) gives
    each run's arguments (the resumed one gets -resume)."""
    import torch

    whole = main_run(argv_of(folder / "whole", folder / "whole-gen"))
    assert whole.returncode == 0, whole.stderr

    def terminate(line):
        if line.startswith(stop_at):
            os.kill(os.getpid(), signal.SIGTERM)

    cut = argv_of(folder / "cut", folder / "cut-gen")
    stopped = main_run(cut, on_line=terminate)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    resumed = main_run([*cut, "-resume", folder / "cut"])
    assert resumed.returncode == 0, resumed.stderr
    last = max((p for p in os.listdir(folder / "whole") if p.startswith("model_")),
               key=lambda name: int(name[6:-4]) if name[6:-4].isdigit() else -1)  # fmt: skip
    return tuple(torch.load(folder / run / last, weights_only=True)["model"]
                 for run in ("whole", "cut"))  # fmt: skip
