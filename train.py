"""The training loop (the Lua's train.lua): SGD steps, top-1/top-5 errors, printed lines."""

import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

Batch = tuple[torch.Tensor, ...]  # (images, target) or (images, target, n_skipped)
StepHook = Callable[[int, int], None]  # (epoch, iteration) after each SGD step
# (images, labels, epoch, iteration) -> (images, targets as class probabilities)
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


class WeightAverage(Protocol):
    """Weights averaged over training steps (averaging.ExponentialAverage)."""

    module: nn.Module

    def after_step(self, epoch: int, iteration: int) -> None: ...


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INPUT_BOUND_MIN_ITERATIONS = 50


class Interrupted(Exception):
    """Raised by a hook or a stop request to end training early (the caller saves state)."""


class NoImagesSeen(Exception):
    """A pass over a split saw no image (every one unreadable and skipped): the data's
    fault, which errors.exit_status says as it says a UsageError."""


def count_wrong(output: torch.Tensor, target: torch.Tensor, n_crops: int = 1) -> torch.Tensor:
    """Top-1 and top-5 misses of a batch as a 2-element tensor on its device (no sync);
    logits of an image's crops are summed first."""
    if n_crops > 1:
        output = output.view(-1, n_crops, output.shape[-1]).sum(1)
    k = min(5, output.shape[-1])  # the Lua's topk(5) failed below 5 classes (its #184)
    correct = output.topk(k, dim=1).indices.eq(target.view(-1, 1))
    hits = torch.stack((correct[:, :1].sum(), correct.sum()))
    return target.shape[0] - hits


def to_host(values: torch.Tensor) -> list[float]:
    """Device sums as host numbers: a wait for the device, so the trainer reads them only
    when it prints a line or saves (the non-finite check of a saved epoch waits too)."""
    return values.tolist()


def skipped_in(batch: Batch) -> int:
    """Samples the loader dropped from this batch (its optional third element)."""
    return int(batch[2]) if len(batch) > 2 else 0


class RunningSums:
    """Top-1 misses, top-5 misses, loss x images and images, summed on the device since the
    last read (the window) and on the host over the whole pass (the total)."""

    def __init__(self, device: torch.device, total: list[float] | None = None):
        self.window = torch.zeros(4, dtype=torch.float64, device=device)
        self.total = list(total) if total is not None else [0.0, 0.0, 0.0, 0.0]
        self.iterations = 0  # in the window

    def add(self, wrong: torch.Tensor, loss: torch.Tensor | None, n: int) -> None:
        """Accumulate one batch without synchronising."""
        self.window[:2] += wrong
        if loss is not None:
            self.window[2] += loss.double() * n
        self.window[3] += n
        self.iterations += 1

    def loss_is_finite(self) -> bool:
        """Whether the window's losses are finite (a sync; asked before a checkpoint)."""
        return bool(torch.isfinite(self.window[2]))

    def snapshot(self) -> list[float]:
        """The total so far, the unread window included (a sync; for a checkpoint)."""
        return [t + w for t, w in zip(self.total, to_host(self.window), strict=True)]

    def read(self) -> tuple[list[float], list[float]]:
        """(window, total) as (top1 %, top5 %, mean loss, images); starts a new window."""
        window = to_host(self.window)
        self.window.zero_()
        self.iterations = 0
        self.total = [t + w for t, w in zip(self.total, window, strict=True)]
        return as_means(window), as_means(self.total)


def as_means(sums: list[float]) -> list[float]:
    """(misses1, misses5, loss sum, n) -> (top1 %, top5 %, mean loss, n)."""
    n = max(sums[3], 1.0)
    return [sums[0] * 100 / n, sums[1] * 100 / n, sums[2] / n, sums[3]]


def check_images_seen(images: float, split: str, epoch: int) -> None:
    """NoImagesSeen when a pass saw no image (every one unreadable, skipped): an error over
    0 images is no result, and is never recorded as one (nor as the best)."""
    if images == 0:
        raise NoImagesSeen(
            f"every image of epoch {epoch}'s {split} pass was unreadable and skipped"
            " (-skipCorrupt true): there is no error over 0 images; fix or remove the files"
            " (the checkpoints before are intact)"
        )


@dataclass(frozen=True)
class Placement:
    """Where and how a step computes: the device, the input's memory layout, the weights'
    dtype, autocast's (None: off) and the gradient-norm clip (0: off)."""

    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    clip_grad_norm: float = 0.0


class Step:
    """One SGD step of a model in its precision and memory layout: forward, loss, backward,
    gradient clipping, the optimizer (through fp16's loss scaler); and the LR it is at."""

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_at: Callable[[int, float], float],
        placement: Placement,
    ):
        self.model, self.criterion, self.optimizer, self.lr_at = model, criterion, optimizer, lr_at
        self.device, self.memory_format = placement.device, placement.memory_format
        self.dtype, self.autocast_dtype = placement.dtype, placement.autocast_dtype
        self.clip_grad_norm = placement.clip_grad_norm
        # fp16 gradients underflow without loss scaling (fp16 runs only on GPUs: the start
        # refuses -precision half on the CPU).
        use_scaler = placement.autocast_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def set_learning_rate(self, epoch: int, progress: float = 0.0) -> float:
        """Set the schedule's LR on every parameter group, for the iteration that starts
        when `progress` of the epoch is done."""
        lr = self.lr_at(epoch, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input in the model's dtype and memory format, target as int64, on the device."""
        images, target = batch[0], batch[1]
        if images.dim() == 5:  # ten-crop: B x 10 x C x H x W -> (B*10) x C x H x W
            images = images.flatten(0, 1)
        images = images.to(self.device, self.dtype, non_blocking=True)
        images = images.contiguous(memory_format=self.memory_format)
        return images, target.to(self.device, non_blocking=True)

    def forward(self, images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Output of model (default: the trained one), under autocast when a reduced
        precision is asked for."""
        model = self.model if model is None else model
        if self.autocast_dtype is None:
            return model(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return model(images)

    def __call__(
        self, images: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; returns (output, loss) without synchronising."""
        output = self.forward(images)
        loss = self.criterion(output.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return output.detach(), loss.detach()


class Reporting:
    """What a pass says and how its totals are counted: the progress output, a line every
    print_every iterations, and sums over the processes of a distributed run (reduce)."""

    def __init__(
        self,
        progress: "Progress",
        print_every: int,
        device: torch.device,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.progress, self.print_every, self.device, self.reduce = (
            progress,
            print_every,
            device,
            reduce,
        )

    def all_processes(self, totals: list[float]) -> list[float]:
        """Totals summed over the processes of a distributed run (as is, in one process)."""
        if self.reduce is None:
            return totals
        return self.reduce(torch.tensor(totals, dtype=torch.float64, device=self.device)).tolist()

    def report_skipped(self, skipped: list[int]) -> None:
        """Say how many unreadable samples the loaders of all processes dropped this pass,
        and how many readable ones were left out with them (see Trainer.takes_step)."""
        unreadable, left_out = (int(n) for n in self.all_processes([float(n) for n in skipped]))
        if unreadable:
            self.progress.say(f" | skipped {unreadable} unreadable images")
        if left_out:
            self.progress.say(
                f" | left out {left_out} readable images of batches in which"
                " another process had none"
            )


class Evaluation:
    """The test pass of a model, and what goes with it: -preciseBN's statistics and a trial
    forward pass at the validation batch's size."""

    def __init__(
        self,
        step: Step,
        reporting: Reporting,
        evaluated: nn.Module,
        *,
        n_crops: int = 1,
        average: "WeightAverage | None" = None,
    ):
        self.step, self.reporting, self.evaluated = step, reporting, evaluated
        self.n_crops, self.average = n_crops, average

    def evaluated_model(self) -> nn.Module:
        """The model to evaluate (and to recompute BatchNorm statistics with): the averaged
        weights when averaging, else the trained model, or the one given for it (in a
        distributed run, one whose forward does not communicate, as processes evaluate
        different numbers of images)."""
        return self.average.module if self.average is not None else self.evaluated

    @torch.no_grad()
    def try_evaluation(self, shape: tuple[int, ...]) -> None:
        """One forward pass of the evaluated model on zeros of the validation batch's
        shape: a size or memory failure of validation shows before the first epoch is
        trained, not after it. Changes no weight or statistic (eval mode)."""
        model = self.evaluated_model()
        model.eval()
        try:
            images = torch.zeros(shape, dtype=self.step.dtype, device=self.step.device)
            self.step.forward(images.contiguous(memory_format=self.step.memory_format), model)
        finally:
            model.train()

    def recompute_bn_statistics(self, loader: Iterable[Batch], batches: int) -> int:
        """Precise BN (as pycls; what fb.resnet.torch's maintainers advised for reproducing
        ImageNet numbers): every BatchNorm's running mean and variance become their plain
        average over the first `batches` batches of loader, weighted by images over the
        processes. Weights are untouched. Returns the images used, by all processes."""
        model = self.evaluated_model()
        norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative, equally weighted average of the batches
        model.train()
        images = 0
        with torch.no_grad():
            for batch in itertools.islice(loader, batches):
                if len(batch[1]) > 0:  # else every image of this batch was unreadable
                    inputs, _ = self.step.to_device(batch)
                    self.step.forward(inputs, model)
                    images += inputs.shape[0]
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        return self.average_over_processes(norms, images)

    def average_over_processes(self, norms: list[nn.Module], images: int) -> int:
        """Running statistics averaged over the processes, each weighted by its images;
        returns the images of all processes."""
        reduce = self.reporting.reduce
        if reduce is None or not norms:
            return images
        stats = [stat for norm in norms for stat in (norm.running_mean, norm.running_var)]
        count = torch.tensor([float(images)], dtype=torch.float64, device=self.step.device)
        total = reduce(torch.cat([stat.double() * images for stat in stats] + [count]))
        averages = (total[:-1] / total[-1]).split([stat.numel() for stat in stats])
        for stat, average in zip(stats, averages, strict=True):
            stat.copy_(average)
        return int(total[-1])

    @torch.no_grad()
    def test(
        self,
        epoch: int,
        loader: Iterable[Batch],
        *,
        stop: Callable[[], bool] | None = None,
        summary: bool = True,
    ) -> tuple[float, float]:
        """Evaluate; per-image errors over the whole split, partial batches included.
        Raises Interrupted between batches once stop() is true (a StopRequest: in a
        distributed run, true in every process at the same batch). summary: end with the
        Lua's ' * Finished epoch' line (a -testOnly run says ' * Results' instead)."""
        model, progress = self.evaluated_model(), self.reporting.progress
        model.eval()
        sums = RunningSums(self.step.device)
        clock, skipped, size = WindowClock(), [0, 0], len(loader)
        progress.begin("val", epoch, size, 0)
        with progress.closing_on_error():
            for n, batch in enumerate(loader, 1):
                if stop is not None and stop():
                    model.train()
                    raise Interrupted(f"while testing epoch {epoch}")
                clock.batch_arrived()
                skipped[0] += skipped_in(batch)
                if len(batch[1]) > 0:  # else every image of this batch was unreadable
                    images, target = self.step.to_device(batch)
                    output = self.step.forward(images, model).float()
                    sums.add(count_wrong(output, target, self.n_crops), None, target.shape[0])
                if sums.iterations and (n % self.reporting.print_every == 0 or n == size):
                    self.print_test_line(epoch, n, size, clock, sums)
                clock.step_done()
        model.train()
        return self.finish_test(epoch, sums, skipped, summary)

    def finish_test(
        self, epoch: int, sums: "RunningSums", skipped: list[int], summary: bool
    ) -> tuple[float, float]:
        """The test pass's errors over every process, recorded and (with summary) said."""
        self.reporting.report_skipped(skipped)
        totals = sums.read()[1] if sums.iterations else sums.total
        top1, top5, _, images = as_means(self.reporting.all_processes(totals))
        check_images_seen(images, "validation", epoch)
        progress = self.reporting.progress
        progress.end({"epoch": epoch, "split": "val", "top1": top1, "top5": top5})
        if summary:
            top5_text = progress.top5_text(top5, 7)
            progress.say(f" * Finished epoch # {epoch}     top1: {top1:7.3f}  top5: {top5_text}\n")
        return top1, top5

    def print_test_line(self, epoch, n: int, size: int, clock: "WindowClock", sums) -> None:
        """The Lua's test line for the window ending at iteration n, with running errors."""
        iterations, progress = sums.iterations, self.reporting.progress
        (top1, top5, _, images), (run1, run5, *_) = sums.read()
        elapsed, data_time = clock.read(iterations)
        line = (
            f" | Test: [{epoch}][{n}/{size}]    Time {elapsed:.3f}  Data {data_time:.3f}"
            f"  top1 {top1:7.3f} ({run1:7.3f})  top5 {progress.top5_text(top5, 7)}"
            f" ({progress.top5_text(run5, 7)})"
        )
        record = {
            "epoch": epoch,
            "iter": n,
            "split": "val",
            "top1": top1,
            "top5": top5,
            **window_speed(images, iterations, elapsed, data_time),
        }
        progress.step(line, record, iterations, {"top1": run1, "top5": run5})


class Trainer:
    """Trains one model; knows nothing of the network or the data set. The training pass is
    here; the SGD step (Step) and the test pass (Evaluation, with its Reporting) are parts
    built before it."""

    def __init__(
        self,
        step: Step,
        evaluation: "Evaluation",
        *,
        every_process: Callable[[bool], bool] | None = None,
        mix: BatchTransform | None = None,
    ):
        self.step, self.evaluation, self.reporting = step, evaluation, evaluation.reporting
        self.every_process = every_process  # whether a flag holds in every process
        self.mix = mix  # training batches -> mixed images and soft targets (MixUp, CutMix)
        self.average = evaluation.average  # weights averaged over steps, evaluated (EMA)
        self.sums = RunningSums(step.device)
        self.warned_input_bound = False

    def train(
        self,
        epoch: int,
        loader: Iterable[Batch],
        *,
        start: int = 0,
        on_step: StepHook | None = None,
        totals: list[float] | None = None,
    ) -> tuple[float, float, float]:
        """One epoch from iteration start + 1 (a resumed epoch's loader yields the rest,
        and totals are the sums of its first part); prints the Lua's line every print_every
        iterations; returns mean top1, top5, loss."""
        lr = self.step.set_learning_rate(epoch, start / max(start + len(loader), 1))
        self.reporting.progress.say(f"=> Training epoch # {epoch}")
        self.step.model.train()
        self.sums = sums = RunningSums(self.step.device, totals)
        clock, skipped, size = WindowClock(), [0, 0], start + len(loader)
        self.reporting.progress.begin("train", epoch, size, start)
        with self.reporting.progress.closing_on_error():
            for n, batch in enumerate(loader, start + 1):
                clock.batch_arrived()
                skipped[0] += skipped_in(batch)
                lr = self.step.set_learning_rate(epoch, (n - 1) / size)
                if self.takes_step(batch, skipped):
                    self.train_step(batch, epoch, n)
                if sums.iterations and (n % self.reporting.print_every == 0 or n == size):
                    self.print_train_line(epoch, n, size, clock, lr)
                if on_step is not None:
                    on_step(epoch, n)
                clock.step_done()
            if sums.iterations:
                self.print_train_line(epoch, size, size, clock, lr)
        self.reporting.report_skipped(skipped)
        self.warn_if_input_bound(epoch, clock, size - start)
        top1, top5, loss, images = as_means(self.reporting.all_processes(sums.total))
        check_images_seen(images, "training", epoch)
        self.reporting.progress.end(
            {"epoch": epoch, "split": "train", "loss": loss, "top1": top1, "top5": top5, "lr": lr}
        )
        return top1, top5, loss

    def train_step(self, batch: Batch, epoch: int, n: int) -> None:
        """Iteration n's step on batch (mixed when mixing), counted in the pass's sums,
        then the weight average's update."""
        images, target = self.step.to_device(batch)
        if self.mix is not None:
            images, target = self.mix(images, target, epoch, n)
        output, loss = self.step(images, target)
        # Mixed targets are scored against each image's dominant class.
        hard = target.argmax(1) if target.dim() == 2 else target
        self.sums.add(count_wrong(output, hard), loss, target.shape[0])
        if self.average is not None:
            self.average.after_step(epoch, n)

    def takes_step(self, batch: Batch, skipped: list[int]) -> bool:
        """Whether this batch trains: when some of its images were readable, and when
        every_process is given, in every process; else its readable images are counted in
        skipped[1]."""
        readable = len(batch[1]) > 0  # else every image of this batch was unreadable
        if self.every_process is None or self.every_process(readable):
            return readable
        skipped[1] += len(batch[1])
        return False

    def print_train_line(self, epoch, n: int, size: int, clock: "WindowClock", lr) -> None:
        """The Lua's training line for the window ending at iteration n (a sync point)."""
        iterations = self.sums.iterations
        (top1, top5, loss, images), (run1, run5, run_loss, _) = self.sums.read()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at epoch {epoch}, iteration {n}; try a lower -LR"
            )
        elapsed, data_time = clock.read(iterations)
        progress = self.reporting.progress
        line = (
            f" | Epoch: [{epoch}][{n}/{size}]    Time {elapsed:.3f}  Data {data_time:.3f}"
            f"  Err {loss:1.4f}  top1 {top1:7.3f}  top5 {progress.top5_text(top5, 7)}"
        )
        speed = window_speed(images, iterations, elapsed, data_time)
        record = {
            "epoch": epoch,
            "iter": n,
            "split": "train",
            "loss": loss,
            "top1": top1,
            "top5": top5,
            "lr": lr,
            **speed,
        }
        running = {"loss": run_loss, "top1": run1, "top5": run5}
        progress.step(line, record, iterations, running)

    def check_finite(self) -> None:
        """Raise FloatingPointError if a loss since the last printed line was not finite;
        the caller asks before writing a checkpoint mid-epoch."""
        if self.sums.iterations and not self.sums.loss_is_finite():
            raise FloatingPointError("the loss is not finite; try a lower -LR")

    def warn_if_input_bound(self, epoch: int, clock: "WindowClock", iterations: int) -> None:
        """Say once per run when over half of an epoch went to waiting for data; epochs of
        fewer than INPUT_BOUND_MIN_ITERATIONS are not judged (start-up would dominate)."""
        share = clock.data_share()
        if self.warned_input_bound or iterations < INPUT_BOUND_MIN_ITERATIONS or share <= 0.5:
            return
        self.warned_input_bound = True
        self.reporting.progress.say(
            f" | warning: input-bound: {share:.0%} of epoch {epoch} went to waiting for data;"
            " more loader workers (-nThreads), faster storage or -decodeOnDevice would help"
        )


def trainer_of(
    step: Step,
    progress: "Progress | None" = None,
    *,
    n_crops: int = 1,
    mix: BatchTransform | None = None,
    average: "WeightAverage | None" = None,
) -> Trainer:
    """A one-process trainer of step that prints every line through progress (by default
    to stdout) and evaluates the trained model (or its average): for a trainer used alone."""
    reporting = Reporting(progress or Progress(), 1, step.device)
    evaluation = Evaluation(step, reporting, step.model, n_crops=n_crops, average=average)
    return Trainer(step, evaluation, mix=mix)


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


class Progress:
    """Where the trainer's output goes: the Lua's plain lines, or on a terminal one tqdm
    bar per pass (the pass's running loss and errors, img/s, data share, ETA, fitted to the
    terminal's width); and every printed step and finished pass handed to `record`
    (metrics.jsonl, TensorBoard). top5: whether top-5 errors mean anything (over 5 classes)."""

    WIDE = 110  # columns from which the bar shows the top-5 error, the LR and a bar

    def __init__(
        self,
        log: Callable[[str], None] = print,
        *,
        bar: bool = False,
        record: Callable[[dict], None] | None = None,
        top5: bool = True,
    ):
        self.log = log
        self.use_bar = bar
        self.record = record
        self.top5 = top5
        self.bar = None
        self.wide = False

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
        if self.bar is not None:
            self.bar.update(iterations)
            self.bar.set_postfix_str(self.postfix({**record, **(running or {})}), refresh=True)
        else:
            self.log(line)
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

    def end(self, summary: dict) -> None:
        """The pass is over: close its bar, record its summary."""
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

    def open(self) -> None:
        """Create what the records go into, on the first record: a run that fails before
        its first step leaves no files."""
        self.opened = True
        if self.before_first_write is not None:
            self.before_first_write()
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

    def write_scalars(self, record: dict) -> None:
        """The record's numbers as TensorBoard scalars, at the iteration or the epoch."""
        split, epoch = record["split"], record["epoch"]
        if record["iter"] is None:
            names, step = {k: f"epoch/{split}_{k}" for k in self.SCALARS}, epoch
        else:
            names = {k: f"{split}/{k}" for k in self.SCALARS}
            step = (epoch - 1) * self.per_epoch + record["iter"]
        for key, name in names.items():
            if key in record:
                self.writer.add_scalar(name, record[key], step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            with self.naming_errors(self.tb_folder):
                self.writer.close()
