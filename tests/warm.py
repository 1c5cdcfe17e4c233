"""`python script.py ...` for tests, forked from an interpreter that has already imported torch.

A fresh `python main.py` spends 3-5 s of a 2-core machine importing torch before it reads its
first flag, and the suite starts main.py and the scripts a few hundred times. Here a fork server
(multiprocessing's "forkserver") imports torch, torchvision and numpy once; every run is a fork of
it that runs the script as `__main__`. The run is still a process of its own: its own pid, working
folder, environment, standard output and error (the caller's file descriptors, passed across),
exit status (a signal's too), and signals it can be sent. Only the import time is gone.

`run` and `start` take what `subprocess.run` and `subprocess.Popen` take for the cases the tests
use; a command that is not `[sys.executable, "some/script.py", ...]` goes to subprocess as it is.
One thing does not work from such a fork: torch.compile's compile workers, started with an
empty inductor cache, never answer; a test that compiles in main.py starts it with subprocess.
"""

import atexit
import builtins
import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from multiprocessing import reduction

PRELOADED = ["torch", "torchvision", "numpy", "PIL.Image", "tqdm"]
FLUSH_FAILED = 120  # what Python exits with when flushing stdout at exit fails


class Descriptor:
    """An open file descriptor of this process, arriving in the child as a descriptor of its own."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return received, (reduction.DupFd(self.fd),)


def received(duplicate) -> int:
    """The child's number for a descriptor sent by Descriptor."""
    return duplicate.detach()


def runs_a_script(command) -> bool:
    """True for [python, path/to/script.py, ...] and [python, -c, code, ...] run by this
    interpreter."""
    return (
        isinstance(command, list | tuple)
        and len(command) >= 2
        and command[0] == sys.executable
        and (str(command[1]).endswith(".py") or (command[1] == "-c" and len(command) >= 3))
    )


def run_as_main(script: str, argv: list[str]) -> None:
    """What `python script argv` or `python -c code argv` does once the interpreter is up."""
    if script == "-c":
        code, *argv = argv
        sys.argv = ["-c", *argv]
        sys.path.insert(0, "")
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    else:
        sys.argv = [script, *argv]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")


def exit_status(code) -> int:
    """The process exit status of SystemExit(code), as the interpreter computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def python_exit(code: int) -> None:
    """End the child as the interpreter ends: join threads, run atexit, flush, exit."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or FLUSH_FAILED
    os._exit(code)


def standard_stream(fd: int, unbuffered: bool, **options) -> io.TextIOWrapper:
    """sys.stdout or sys.stderr on fd as the interpreter makes them (-u or PYTHONUNBUFFERED:
    every write reaches the file at once)."""
    raw = io.FileIO(fd, "w", closefd=False)
    if unbuffered:
        return io.TextIOWrapper(raw, write_through=True, **options)
    return io.TextIOWrapper(io.BufferedWriter(raw), **options)


def script_main(script, argv, cwd, env, stdout_fd, stderr_fd) -> None:
    """In the forked child: become `python script argv` in cwd with env, then exit."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, given in ((1, stdout_fd), (2, stderr_fd)):
        if given is not None:
            os.dup2(given, fd)
            os.close(given)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdout = standard_stream(1, unbuffered)
    sys.stderr = standard_stream(2, unbuffered, errors="backslashreplace", line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    multiprocessing.set_start_method(None, force=True)  # the default again, not forkserver
    try:
        run_as_main(script, argv)
        code = 0
    except SystemExit as stop:
        code = exit_status(stop.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    python_exit(code)


def fork_server():
    """The multiprocessing context whose server has the heavy modules imported."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


class Started:
    """A running script, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, command, process, stdout, stderr):
        self.args, self.process, self.stdout, self.stderr = command, process, stdout, stderr
        self.pid = process.pid
        self.returncode = None

    def poll(self):
        self.returncode = self.process.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        """(stdout, stderr) read to their ends, in threads so that neither pipe fills."""
        outputs = [None, None]

        def read(index, handle):
            outputs[index] = handle.read()

        readers = [threading.Thread(target=read, args=(i, handle))
                   for i, handle in enumerate((self.stdout, self.stderr)) if handle is not None]  # fmt: skip
        for reader in readers:
            reader.start()
        self.wait(timeout)
        for reader in readers:
            reader.join()
        return tuple(outputs)

    def send_signal(self, number):
        if self.poll() is None:
            os.kill(self.pid, number)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def target_of(choice, pipes: list):
    """(fd for the child or None to inherit, reader for the caller or None) of a stdout= or
    stderr= choice; the child's ends to close here once it has started go into pipes."""
    if choice is None:
        return None, None
    if choice == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_WRONLY)
        pipes.append(fd)
        return fd, None
    if choice == subprocess.PIPE:
        read, write = os.pipe()
        pipes.append(write)
        return write, read
    return (choice if isinstance(choice, int) else choice.fileno()), None


def start(command, *, stdout=None, stderr=None, text=False, env=None, cwd=None):
    """subprocess.Popen(command, ...) for a Python script, forked warm."""
    if not runs_a_script(command):
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd)
    to_close = []
    out_fd, out_read = target_of(stdout, to_close)
    err_fd, err_read = (
        (out_fd, None) if stderr == subprocess.STDOUT else target_of(stderr, to_close)
    )
    args = (
        str(command[1]),
        [str(word) for word in command[2:]],
        str(cwd or os.getcwd()),
        dict(os.environ if env is None else env),
        None if out_fd is None else Descriptor(out_fd),
        None if err_fd is None else Descriptor(err_fd),
    )
    process = fork_server().Process(target=script_main, args=args, daemon=False)
    process.start()
    for fd in to_close:
        os.close(fd)
    mode = "r" if text else "rb"
    readers = [None if fd is None else open(fd, mode) for fd in (out_read, err_read)]
    return Started(command, process, *readers)


def run(command, *, capture_output=False, stdout=None, stderr=None, text=False, env=None,
        cwd=None, timeout=None, check=False):  # fmt: skip
    """subprocess.run(command, ...) for a Python script, forked warm."""
    if not runs_a_script(command):
        return subprocess.run(command, capture_output=capture_output, stdout=stdout,
                              stderr=stderr, text=text, env=env, cwd=cwd, timeout=timeout,
                              check=check)  # fmt: skip
    if capture_output:
        stdout = stderr = subprocess.PIPE
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        # Files, not pipes, take what the child writes: nothing waits on a full pipe.
        out = out_file if stdout == subprocess.PIPE else stdout
        err = err_file if stderr == subprocess.PIPE else stderr
        started = start(command, stdout=out, stderr=err, env=env, cwd=cwd)
        try:
            code = started.wait(timeout)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()
            raise
        outputs = [read_back(f) if choice == subprocess.PIPE else None
                   for f, choice in ((out_file, stdout), (err_file, stderr))]  # fmt: skip
    if text:  # decoded as subprocess decodes: the locale's encoding, universal newlines
        outputs = [None if o is None else io.TextIOWrapper(io.BytesIO(o)).read() for o in outputs]
    done = subprocess.CompletedProcess(command, code, *outputs)
    if check:
        done.check_returncode()
    return done


def read_back(handle) -> bytes:
    """All that was written to the temporary file handle."""
    handle.seek(0)
    return handle.read()
