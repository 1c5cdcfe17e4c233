"""What can go wrong in a run, by type: the user's input (UsageError, exit 2), the
machine (out of memory, a full disk, a dead loader worker: exit 1), a stop request (exit
128 + signal), and anything else, a bug, which shows its traceback."""

import contextlib
import difflib
import errno
import signal
import sys

REPORT_BUGS = (
    "this is a bug in the tool, not in your input: please report it with the traceback above"
)


class UsageError(Exception):
    """Raised on purpose where the user's input is at fault (a flag, the data, a file, the
    environment): main prints it as one 'error:' line and exits 2."""


class Stopped(Exception):
    """SIGTERM / SIGINT before training started, or while only testing: nothing to save."""

    def __init__(self, signal_number: int, doing: str):
        super().__init__(f"while {doing}")
        self.signal_number = signal_number


class StoppedWaiting(Exception):
    """SIGTERM / SIGINT while training waited for its next batch (data that may never come:
    a hung fetch, a stalled file system): the loop saves at its last step and stops."""


class PeerFailed(Exception):
    """Another process of the job failed (it reports why); rank 0 says so, the others
    end quietly."""

    def __init__(self, message: str, rank: int = 0):
        super().__init__(message)
        self.rank = rank


@contextlib.contextmanager
def stops_raise(doing: str):
    """In the block, SIGINT (Ctrl-C) and SIGTERM raise Stopped(number, doing), so that a
    script's finally blocks run (a child process ended, a partial file removed)."""

    def stop(number, _frame) -> None:
        raise Stopped(number, doing)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def stopped_status(exc: Stopped, outcome: str) -> int:
    """Say on stderr, in one line, that a script was stopped and what is left (outcome);
    the exit status (128 + the signal's number)."""
    name = signal.Signals(exc.signal_number).name
    print(f"=> Stopped by {name} {exc}; {outcome}", file=sys.stderr)
    return 128 + exc.signal_number


def file_error(exc: OSError) -> str:
    """An OSError as 'FILE: reason' (its name and strerror, not '[Errno N] ...')."""
    reason = exc.strerror or first_line(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def unknown(what: str, value, choices) -> UsageError:
    """The error for a value that is none of its choices: 'unknown WHAT VALUE (options:
    ...)', and the closest choice when one is close."""
    listed = ", ".join(map(str, choices))
    return UsageError(f"unknown {what} {value} (options: {listed}){closest(str(value), choices)}")


def closest(typed: str, choices, prefix: str = "") -> str:
    """'; did you mean PREFIX+X?' for the choice closest to a mistyped one (case aside), or ''."""
    spelled = {str(choice).lower(): str(choice) for choice in choices}
    close = difflib.get_close_matches(typed.lower(), spelled, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{spelled[close[0]]}?" if close else ""


def check_choice(what: str, value, choices) -> None:
    """Raise unknown(what, value, choices) unless value is one of choices."""
    if value not in choices:
        raise unknown(what, value, choices)


def one_line(exc: BaseException) -> str:
    """The message of exc on one line; for an error raised in a loader worker, its own."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # DataLoader re-raises with the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        if exc.filename is None:  # a print: the output is redirected to a full device
            return "no space left on the device that the output (stdout) is written to"
        return (
            f"no space left on device writing {exc.filename}; the checkpoints before it are intact"
        )
    return " ".join(text.split())


def quoted(value, limit: int = 100) -> str:
    """repr(value) cut to about `limit` characters: how an error quotes data (an image's
    bytes, a name from someone else's file) without printing all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def first_line(exc: BaseException) -> str:
    """The first line of exc's message (or its type's name when it has none): the reason to
    quote in a one-line error, where the rest is a library's advice or a traceback."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def named_as(exc: BaseException, name: str) -> bool:
    """Whether exc is an instance of a class called name (torch's errors, told apart
    without importing torch here: the option parser imports this module)."""
    return any(kind.__name__ == name for kind in type(exc).__mro__)


def resource_error(exc: RuntimeError) -> str | None:
    """What to do when memory runs out or a loader worker dies (None for other errors)."""
    text = one_line(exc)
    if named_as(exc, "OutOfMemoryError") or "can't allocate memory" in text:
        _, allocator, detail = text.partition("DefaultCPUAllocator")  # past "[enforce fail ..."
        text = allocator + detail if allocator else text
        return (
            f"out of memory ({text[:200]}): lower -batchSize, or use -optnet true or"
            " -precision bf16; the checkpoints are intact"
        )
    if text.startswith("DataLoader worker"):
        return (
            f"a data loader worker died ({text[:200]}): it ran out of memory or shared"
            " memory (in Docker: --shm-size or --ipc=host); lower -nThreads or -batchSize;"
            " the checkpoints are intact: rerun with -resume"
        )
    return None


def runtime_error(exc: RuntimeError, distributed: bool) -> str | None:
    """The one line for a RuntimeError that is not a bug: the machine's resources, a
    torch.compile failure, another process of the job failing (None: a bug)."""
    if (message := resource_error(exc)) is not None:
        return message
    module = type(exc).__module__
    if module.startswith(("torch._dynamo", "torch._inductor")):
        return f"torch.compile failed ({one_line(exc)[:300]}); run without -compile"
    if named_as(exc, "DistError") or distributed:
        return (
            f"another process of this distributed job failed ({one_line(exc)[:300]});"
            " the checkpoints are intact: rerun with -resume"
        )
    return None


def exit_status(exc: BaseException, distributed: bool) -> int:
    """Say what ended the run in one line on stderr and return the exit status; a bug
    (any error not raised on purpose) gets its traceback and a line asking to report it."""
    if isinstance(exc, PeerFailed):
        if exc.rank == 0:  # the failed process gave its reason; once is enough
            print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, Stopped | KeyboardInterrupt):
        number = getattr(exc, "signal_number", signal.SIGINT)
        doing = f" {exc}" if isinstance(exc, Stopped) else ""
        name = signal.Signals(number).name
        print(f"\n=> Stopped by {name}{doing}; nothing was saved", file=sys.stderr)
        return 128 + number
    if isinstance(exc, UsageError) or named_as(exc, "NoImagesSeen"):  # train.py's: a leaf
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    message = None
    if isinstance(exc, FloatingPointError | OSError):
        message = one_line(exc)
    elif isinstance(exc, RuntimeError):
        message = runtime_error(exc, distributed)
    if message is None:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        print(f"error: {REPORT_BUGS}", file=sys.stderr)
        return 1
    print(f"error: {message}", file=sys.stderr)
    return 1
