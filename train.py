"""The training loop (the Lua's train.lua): SGD steps, top-1/top-5 errors, printed lines."""

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]  # (images, target) or (images, target, n_skipped)
StepHook = Callable[[int, int], None]  # (epoch, iteration) after each SGD step


class Interrupted(Exception):
    """Raised by a hook or a stop request to end training early (the caller saves state)."""


def step_lr(epoch: int, base_lr: float, every: int = 30) -> float:
    """ImageNet: base_lr * 0.1^floor((epoch - 1) / every)."""
    return base_lr * 0.1 ** ((epoch - 1) // every)


def milestone_lr(epoch: int, base_lr: float, milestones=(81, 122)) -> float:
    """fb CIFAR: x0.1 from each absolute milestone epoch on."""
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


def relative_lr(epoch: int, base_lr: float, n_epochs: int, fractions=(0.49, 0.74)) -> float:
    """ResNeXt CIFAR: x0.1 once epoch / n_epochs exceeds each fraction."""
    return base_lr * 0.1 ** sum(epoch / n_epochs > f for f in fractions)


def compute_score(
    output: torch.Tensor, target: torch.Tensor, n_crops: int = 1
) -> tuple[float, float]:
    """Top-1 and top-5 error in percent; logits of an image's crops are summed first."""
    if n_crops > 1:
        output = output.view(-1, n_crops, output.shape[-1]).sum(1)
    k = min(5, output.shape[-1])  # the Lua's topk(5) failed below 5 classes (its #184)
    predictions = output.topk(k, dim=1).indices
    correct = predictions.eq(target.view(-1, 1))
    batch = target.shape[0]
    top1 = 1.0 - correct[:, :1].sum().item() / batch
    top5 = 1.0 - correct.sum().item() / batch
    return top1 * 100, top5 * 100


def skipped_in(batch: Batch) -> int:
    """Samples the loader dropped from this batch (its optional third element)."""
    return int(batch[2]) if len(batch) > 2 else 0


class Trainer:
    """Trains and evaluates one model; knows nothing of the network or the data set."""

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_at: Callable[[int], float],
        *,
        device: torch.device,
        n_crops: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
        dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        log: Callable[[str], None] = print,
    ):
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr_at = lr_at
        self.device = device
        self.n_crops = n_crops
        self.memory_format = memory_format
        self.dtype = dtype
        self.autocast_dtype = autocast_dtype
        self.log = log
        use_scaler = autocast_dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def set_learning_rate(self, epoch: int) -> float:
        """Set the schedule's LR for this epoch on every parameter group."""
        lr = self.lr_at(epoch)
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Model output, under autocast when a reduced precision is asked for."""
        if self.autocast_dtype is None:
            return self.model(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.model(images)

    def step(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; returns (output, loss) without synchronising."""
        output = self.forward(images)
        loss = self.criterion(output.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return output.detach(), loss.detach()

    def train(
        self,
        epoch: int,
        loader: Iterable[Batch],
        *,
        start: int = 0,
        on_step: StepHook | None = None,
    ) -> tuple[float, float, float]:
        """One epoch from iteration start + 1 (a resumed epoch's loader yields the rest);
        prints the Lua's line per iteration; returns mean top1, top5, loss."""
        self.set_learning_rate(epoch)
        self.log(f"=> Training epoch # {epoch}")
        self.model.train()
        sums, n_seen, skipped, size = [0.0, 0.0, 0.0], 0, 0, start + len(loader)
        timer = data_timer = time.perf_counter()
        for n, batch in enumerate(loader, start + 1):
            data_time = time.perf_counter() - data_timer
            skipped += skipped_in(batch)
            if len(batch[1]) == 0:
                continue  # every image of this batch was unreadable and skipped
            images, target = self.to_device(batch)
            output, loss = self.step(images, target)
            loss_value = loss.item()  # sync point: the line below prints it
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss is {loss_value} at epoch {epoch}, iteration {n}; try a lower -LR"
                )
            top1, top5 = compute_score(output, target)
            batch_size = target.shape[0]
            for i, value in enumerate((top1, top5, loss_value)):
                sums[i] += value * batch_size
            n_seen += batch_size
            elapsed = time.perf_counter() - timer
            self.log(
                f" | Epoch: [{epoch}][{n}/{size}]    Time {elapsed:.3f}  Data {data_time:.3f}"
                f"  Err {loss_value:1.4f}  top1 {top1:7.3f}  top5 {top5:7.3f}"
            )
            if on_step is not None:
                on_step(epoch, n)
            timer = data_timer = time.perf_counter()
        self.report_skipped(skipped)
        return tuple(s / max(n_seen, 1) for s in sums)

    def report_skipped(self, skipped: int) -> None:
        """Say how many unreadable samples the loader dropped this pass."""
        if skipped:
            self.log(f" | skipped {skipped} unreadable images")

    @torch.no_grad()
    def test(
        self, epoch: int, loader: Iterable[Batch], *, stop: Callable[[], bool] | None = None
    ) -> tuple[float, float]:
        """Evaluate; per-image errors over the whole split, partial batches included.
        Raises Interrupted between batches once stop() is true."""
        self.model.eval()
        top1_sum = top5_sum = 0.0
        n_seen, skipped, size = 0, 0, len(loader)
        timer = data_timer = time.perf_counter()
        for n, batch in enumerate(loader, 1):
            if stop is not None and stop():
                self.model.train()
                raise Interrupted(f"stopped while testing epoch {epoch}")
            data_time = time.perf_counter() - data_timer
            skipped += skipped_in(batch)
            if len(batch[1]) == 0:
                continue  # every image of this batch was unreadable and skipped
            images, target = self.to_device(batch)
            output = self.forward(images).float()
            top1, top5 = compute_score(output, target, self.n_crops)
            batch_size = target.shape[0]
            top1_sum += top1 * batch_size
            top5_sum += top5 * batch_size
            n_seen += batch_size
            elapsed = time.perf_counter() - timer
            self.log(
                f" | Test: [{epoch}][{n}/{size}]    Time {elapsed:.3f}  Data {data_time:.3f}"
                f"  top1 {top1:7.3f} ({top1_sum / n_seen:7.3f})"
                f"  top5 {top5:7.3f} ({top5_sum / n_seen:7.3f})"
            )
            timer = data_timer = time.perf_counter()
        self.model.train()
        self.report_skipped(skipped)
        top1, top5 = top1_sum / max(n_seen, 1), top5_sum / max(n_seen, 1)
        self.log(f" * Finished epoch # {epoch}     top1: {top1:7.3f}  top5: {top5:7.3f}\n")
        return top1, top5
