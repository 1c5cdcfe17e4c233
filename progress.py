"""What a run shows and keeps as it goes: the Lua's progress lines (or bars on a terminal),
the speed of the last window of iterations, and the run records (metrics.jsonl, TensorBoard,
and the trackers given)."""

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm


class WindowClock:
    """Wall time per iteration and time spent waiting for data, over a printed window
    and over the whole pass."""

    def __init__(self):
        self.mark = self.window_start = self.started = time.perf_counter()
        self.data_time = self.pass_data_time = 0.0

    def batch_arrived(self) -> None:
        """The loader has handed over the next batch."""
        waited = time.perf_counter() - self.mark
        self.data_time += waited
        self.pass_data_time += waited

    def data_share(self) -> float:
        """The share of the pass so far spent waiting for data."""
        elapsed = time.perf_counter() - self.started
        return self.pass_data_time / elapsed if elapsed > 0 else 0.0

    def step_done(self) -> None:
        """The iteration's work is queued; the wait for the next batch starts."""
        self.mark = time.perf_counter()

    def read(self, iterations: int) -> tuple[float, float]:
        """(seconds per iteration, data seconds per iteration) of the window; starts a new one."""
        now = time.perf_counter()
        per = max(iterations, 1)
        result = ((now - self.window_start) / per, self.data_time / per)
        self.window_start, self.data_time = now, 0.0
        return result


def window_speed(images: float, iterations: int, per_iteration: float, data: float) -> dict:
    """img/s and the share of time spent waiting for data over a printed window."""
    seconds = per_iteration * iterations
    return {
        "img_s": images / seconds if seconds > 0 else 0.0,
        "data_share": data / per_iteration if per_iteration > 0 else 0.0,
    }


def terminal_size(stream) -> tuple[int, int]:
    """(columns, rows) of the terminal the stream writes to, as shutil.get_terminal_size
    gives them for sys.__stdout__: COLUMNS / LINES win, and 80 x 24 where the terminal
    reports 0 x 0 (containers, script), which tqdm's own query would take as -1 rows."""
    columns, rows = (environment_number(name) for name in ("COLUMNS", "LINES"))
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):  # not a terminal, or no descriptor
        size = os.terminal_size((0, 0))
    return columns or size.columns or 80, rows or size.lines or 24


def environment_number(name: str) -> int:
    """The environment variable's positive whole number, else 0."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class RunClock:
    """The time a run has taken and an estimate of what is left, for the pass and for the
    run: each pass's seconds per iteration so far, or at its last run (a test pass not yet
    seen counts nothing). now: the time source (seconds)."""

    def __init__(self, last_epoch: int, now: Callable[[], float] = time.monotonic):
        self.last_epoch, self.now = last_epoch, now
        self.started = self.epoch_started = now()
        self.rates: dict[str, tuple[float, int]] = {}  # split -> (seconds per iteration, total)
        self.taken: dict[str, float] = {}  # split -> seconds of its last pass
        self.current = ("train", 1, 0, 0, self.started)  # split, epoch, total, done, start

    def begin(self, split: str, epoch: int, total: int, done: int) -> None:
        """A pass of total iterations starts with done of them already (a resumed epoch)."""
        self.current = (split, epoch, total, done, self.now())
        if split == "train":
            self.epoch_started = self.current[4]

    def at(self, n: int) -> str:
        """What a line printed at iteration n of the pass adds: the run's elapsed time and
        the time left in the epoch and in the run."""
        split, epoch, total, done, start = self.current
        if n > done:
            self.rates[split] = ((self.now() - start) / (n - done), total)
        pass_left = self.rates.get(split, (0.0, 0))[0] * (total - n)
        epoch_left = pass_left + (self.pass_seconds("val") if split == "train" else 0.0)
        run_left = epoch_left + (self.last_epoch - epoch) * self.epoch_seconds()
        return (
            f"  ({duration(self.now() - self.started)} elapsed; left: epoch"
            f" {duration(epoch_left)}, run {duration(run_left)})"
        )

    def pass_seconds(self, split: str) -> float:
        """The estimated seconds of a whole pass of split."""
        rate, total = self.rates.get(split, (0.0, 0))
        return rate * total

    def epoch_seconds(self) -> float:
        """The estimated seconds of a whole epoch: its training and its test pass."""
        return self.pass_seconds("train") + self.pass_seconds("val")

    def end(self, split: str) -> None:
        """The pass is over."""
        self.taken[split] = self.now() - self.current[4]

    def epoch_line(self, epoch: int) -> str:
        """What the epoch took, and what is left of the run (or what the run took)."""
        took, taken = self.now() - self.epoch_started, self.taken
        said = (
            f"=> Epoch {epoch} took {duration(took)} (train {duration(taken.get('train', 0))},"
            f" test {duration(taken.get('val', 0))})"
        )
        epochs_left = self.last_epoch - epoch
        if epochs_left <= 0:
            return f"{said}; {duration(self.now() - self.started)} since this run (or resume) began"
        left = epochs_left * self.epoch_seconds()
        more = "1 more epoch" if epochs_left == 1 else f"{epochs_left} more epochs"
        return f"{said}; about {duration(left)} left for {more}"


class Progress:
    """Where the trainer's output goes: the Lua's plain lines, or on a terminal one tqdm
    bar per pass (the pass's running loss and errors, img/s, data share, ETA, fitted to the
    terminal's width); and every printed step and finished pass handed to `record`
    (metrics.jsonl, TensorBoard). top5: whether top-5 errors mean anything (over 5 classes)."""

    WIDE = 110  # columns from which the bar shows the top-5 error, the LR and a bar
    LINES_PER_PASS = 20  # -printFreq auto without a terminal: a log a person can read

    def __init__(
        self,
        log: Callable[[str], None] = print,
        *,
        bar: bool = False,
        record: Callable[[dict], None] | None = None,
        top5: bool = True,
        clock: RunClock | None = None,
        thin: bool = False,
    ):
        self.log = log
        self.use_bar = bar
        self.record = record
        self.top5 = top5
        self.clock = clock  # the lines' elapsed time and time left (None: not said)
        self.thin = thin  # -printFreq auto without a bar: about LINES_PER_PASS lines a pass
        self.bar = None
        self.wide = False
        self.position = self.total = 0  # iterations of the pass done, and in all
        self.every = 1  # iterations between the lines logged

    def logs_line(self) -> bool:
        """Whether the line at the current position reaches the log (every record is kept)."""
        return not self.thin or self.position % self.every == 0 or self.position >= self.total

    def top5_text(self, error: float, width: int) -> str:
        """A top-5 error as the Lua prints it (%width.3f), or '-' where it means nothing."""
        return f"{error:{width}.3f}" if self.top5 else "-".rjust(width)

    def say(self, text: str) -> None:
        """A line outside the bars (epoch starts, results)."""
        if self.bar is not None:
            tqdm.write(text, file=sys.stdout)
        else:
            self.log(text)

    def begin(self, split: str, epoch: int, total: int, done: int) -> None:
        """A pass of total iterations starts, done of them already (a resumed epoch)."""
        self.position, self.total = done, total
        self.every = max(1, math.ceil(total / self.LINES_PER_PASS))
        if self.clock is not None:
            self.clock.begin(split, epoch, total, done)
        if not self.use_bar:
            return
        columns, rows = terminal_size(sys.stdout)
        self.wide = columns >= self.WIDE
        bar = "|{bar}|" if self.wide else ""  # the bar takes the columns left over
        layout = "{desc} {percentage:3.0f}%" + bar + " {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=f"{split} {epoch}",
            leave=True,
            ncols=columns,
            nrows=rows,
            bar_format=layout + "{postfix}]",
            file=sys.stdout,
        )

    def step(self, line: str, record: dict, iterations: int, running: dict | None = None) -> None:
        """A printed window of `iterations` iterations: its Lua line and its record; the bar
        shows the pass's running means (running) and the window's speed."""
        self.position += iterations
        if self.bar is not None:
            self.bar.update(iterations)
            self.bar.set_postfix_str(self.postfix({**record, **(running or {})}), refresh=True)
        elif self.logs_line():
            self.log(line if self.clock is None else line + self.clock.at(self.position))
        if self.record is not None:
            self.record(record)

    def postfix(self, values: dict) -> str:
        """What the bar shows after the counts: errors as errors, compact enough for 80
        columns (the top-5 error and the LR from WIDE columns on)."""
        parts = [f"loss {values['loss']:.3g}"] if "loss" in values else []
        parts.append(f"err@1 {values['top1']:.1f}")
        if self.top5 and self.wide:
            parts.append(f"err@5 {values['top5']:.1f}")
        if "lr" in values and self.wide:
            parts.append(f"lr {values['lr']:.3g}")
        parts.append(f"{values['img_s']:.0f} img/s data {values['data_share']:.0%}")
        return " ".join(parts)  # tqdm puts ", " before it

    @contextlib.contextmanager
    def closing_on_error(self):
        """Close the pass's bar when the pass ends by an exception (a stop request, an
        error), so that what is printed next starts on a line of its own and the bar is
        not redrawn after it."""
        try:
            yield
        except BaseException:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            raise

    def epoch_done(self, epoch: int) -> None:
        """After the epoch's test: what it took and what is left (with a clock)."""
        if self.clock is not None:
            self.say(self.clock.epoch_line(epoch))

    def end(self, summary: dict) -> None:
        """The pass is over: close its bar, record its summary."""
        if self.clock is not None:
            self.clock.end(summary["split"])
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.record is not None:
            self.record({**summary, "iter": None})


class RunRecords:
    """A run's records: one JSON object per line appended to <folder>/metrics.jsonl, and the
    same numbers as TensorBoard scalars under <folder>/tb. A resumed run appends."""

    SCALARS = ("loss", "top1", "top5", "lr", "img_s", "data_share")

    def __init__(
        self,
        folder: str,
        iterations_per_epoch: int,
        *,
        tensorboard: bool = True,
        options: dict | None = None,
        before_first_write: Callable[[], None] | None = None,
        segment: dict | None = None,
        trackers=None,
    ):
        self.path = os.path.join(folder, "metrics.jsonl")
        self.segment = segment  # where and when this part of the run ran: its first line
        self.tb_folder = os.path.join(folder, "tb")
        self.per_epoch = iterations_per_epoch
        self.started = time.time()
        self.tensorboard, self.options = tensorboard, options
        self.before_first_write = before_first_write
        self.opened = False
        self.writer = None
        self.trackers = trackers  # trackers.Trackers (wandb, MLflow), fed the same records

    def open(self) -> None:
        """Create what the records go into, on the first record: a run that fails before
        its first step leaves no files."""
        self.opened = True
        if self.before_first_write is not None:
            self.before_first_write()
        if self.trackers is not None:
            with self.naming_errors(self.path):
                self.trackers.write_ids()
        if self.segment is not None:
            with self.naming_errors(self.path), open(self.path, "a") as handle:
                handle.write(json.dumps({"split": "segment", **self.segment}) + "\n")
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter  # only when asked for

        with self.naming_errors(self.tb_folder):
            self.writer = SummaryWriter(self.tb_folder)
            if self.options is not None:
                text = json.dumps(self.options, indent=2)
                self.writer.add_text("options", f"```\n{text}\n```")

    @staticmethod
    @contextlib.contextmanager
    def naming_errors(path: str):
        """Re-raise a failed write (a full disk) with the path written to, so that it is
        told apart from a failed print to stdout."""
        try:
            yield
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None

    def __call__(self, record: dict) -> None:
        """Append one record (a printed step, or a pass's summary when iter is None)."""
        if not self.opened:
            self.open()
        record = {**record, "seconds": round(time.time() - self.started, 3)}
        with self.naming_errors(self.path), open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            with self.naming_errors(self.tb_folder):
                self.write_scalars(record)
        if self.trackers is not None:
            self.trackers.log(record, self.iteration_of(record))

    def iteration_of(self, record: dict) -> int:
        """The training iteration of the run a record is at (a pass's summary: its epoch's
        end), the one axis every tracker's steps can share."""
        epoch, iteration = record["epoch"], record["iter"]
        return (epoch - 1) * self.per_epoch + (self.per_epoch if iteration is None else iteration)

    def write_scalars(self, record: dict) -> None:
        """The record's numbers as TensorBoard scalars, at the iteration or the epoch."""
        split, epoch = record["split"], record["epoch"]
        if record["iter"] is None:
            names, step = {k: f"epoch/{split}_{k}" for k in self.SCALARS}, epoch
        else:
            names = {k: f"{split}/{k}" for k in self.SCALARS}
            step = self.iteration_of(record)
        for key, name in names.items():
            if key in record:
                self.writer.add_scalar(name, record[key], step)
        self.writer.flush()

    def close(self, final: dict | None = None, finished: bool = False) -> None:
        """Flush and close the TensorBoard writer; the trackers get the final scores and
        end their runs (finished: the run reached its last epoch)."""
        if self.writer is not None:
            with self.naming_errors(self.tb_folder):
                self.writer.close()
        if self.trackers is not None:
            self.trackers.close(final or {}, finished)
