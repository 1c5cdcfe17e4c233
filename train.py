"""The training loop (the Lua's train.lua): SGD steps, top-1/top-5 errors, printed lines."""

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from progress import Progress, WindowClock, window_speed

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
    dtype, autocast's (None: off), the gradient-norm clip (0: off), and the micro-batches
    each batch's gradient is accumulated over (-accumSteps)."""

    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    clip_grad_norm: float = 0.0
    micro_batches: int = 1


def micro_batches(images: torch.Tensor, target: torch.Tensor, parts: int) -> list[tuple]:
    """The batch as `parts` micro-batches (of sizes differing by one image at most when it
    does not divide; none empty)."""
    pairs = zip(images.tensor_split(parts), target.tensor_split(parts), strict=True)
    return [(part, part_target) for part, part_target in pairs if len(part)]


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
        self.clip_grad_norm, self.parts = placement.clip_grad_norm, placement.micro_batches
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
        self.optimizer.zero_grad(set_to_none=True)
        if self.parts == 1:
            output = self.forward(images)
            loss = self.criterion(output.float(), target)
            self.scaler.scale(loss).backward()
        else:
            output, loss = self.accumulate(images, target)
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return output.detach(), loss.detach()

    def accumulate(self, images: torch.Tensor, target: torch.Tensor):
        """The batch's gradient summed over its micro-batches, each loss weighted by its
        share of the batch (so that the sum is the batch's mean loss); a distributed model
        all-reduces only at the last one. (output, loss) of the whole batch."""
        parts = micro_batches(images, target, self.parts)
        outputs, total = [], 0.0
        for index, (part, part_target) in enumerate(parts):
            last = index == len(parts) - 1
            skip_sync = getattr(self.model, "no_sync", None) if not last else None
            with skip_sync() if skip_sync else contextlib.nullcontext():
                output = self.forward(part)
                loss = self.criterion(output.float(), part_target) * (len(part) / len(images))
                self.scaler.scale(loss).backward()
            outputs.append(output.detach())
            total = total + loss.detach()
        return torch.cat(outputs), total


class Reporting:
    """What a pass says and how its totals are counted: the progress output, a line every
    print_every iterations, and sums over the processes of a distributed run (reduce)."""

    def __init__(
        self,
        progress: Progress,
        print_every: int | None,
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
        every = self.reporting.print_every or 1  # auto: each line, the progress thins them
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
                if sums.iterations and (n % every == 0 or n == size):
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

    def print_test_line(self, epoch, n: int, size: int, clock: WindowClock, sums) -> None:
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
        every = self.reporting.print_every or 1  # auto: each line, the progress thins them
        self.reporting.progress.begin("train", epoch, size, start)
        with self.reporting.progress.closing_on_error():
            for n, batch in enumerate(loader, start + 1):
                clock.batch_arrived()
                skipped[0] += skipped_in(batch)
                lr = self.step.set_learning_rate(epoch, (n - 1) / size)
                if self.takes_step(batch, skipped):
                    self.train_step(batch, epoch, n)
                if sums.iterations and (n % every == 0 or n == size):
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

    def print_train_line(self, epoch, n: int, size: int, clock: WindowClock, lr) -> None:
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

    def warn_if_input_bound(self, epoch: int, clock: WindowClock, iterations: int) -> None:
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
    progress: Progress | None = None,
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
