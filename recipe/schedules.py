"""Learning rates as closed forms of where training is: the Lua's per-dataset rules, step
decay, cosine and a linear warm-up, evaluated at every iteration.

A schedule is called as lr_at(epoch, progress), progress being the share of the epoch done
before this iteration (0 <= progress < 1). A closed form needs no state of its own, so a
run resumed at any iteration continues on exactly the same learning rates.
"""

import math
from collections.abc import Callable, Sequence

Schedule = Callable[[int, float], float]
SCHEDULES = ("lua", "step", "cosine")


def step_lr(epoch: int, base_lr: float, every: int = 30) -> float:
    """ImageNet: base_lr * 0.1^floor((epoch - 1) / every)."""
    return base_lr * 0.1 ** ((epoch - 1) // every)


def milestone_lr(epoch: int, base_lr: float, milestones=(81, 122)) -> float:
    """fb CIFAR: x0.1 from each absolute milestone epoch on."""
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


def relative_lr(epoch: int, base_lr: float, n_epochs: int, fractions=(0.49, 0.74)) -> float:
    """ResNeXt CIFAR: x0.1 once epoch / n_epochs exceeds each fraction."""
    return base_lr * 0.1 ** sum(epoch / n_epochs > f for f in fractions)


def lua_rule(dataset: str, net_type: str, base_lr: float, n_epochs: int) -> Callable[[int], float]:
    """The Lua's schedule for this dataset and netType, as a function of the epoch."""
    if dataset == "imagenet":
        return lambda epoch: step_lr(epoch, base_lr)
    if dataset != "fashionmnist" and net_type != "resnext":
        return lambda epoch: milestone_lr(epoch, base_lr)
    # ResNeXt's rule; also Fashion-MNIST's, whose epochs are not tied to the 164 of fb's.
    return lambda epoch: relative_lr(epoch, base_lr, n_epochs)


def cosine_lr(elapsed: float, base_lr: float, min_lr: float, start: float, end: float) -> float:
    """Half a cosine from base_lr at `start` to min_lr at `end` (in epochs elapsed), as
    torch.optim.lr_scheduler.CosineAnnealingLR stepped once per iteration; base_lr before."""
    if elapsed <= start:
        return base_lr
    share = min((elapsed - start) / (end - start), 1.0)
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * share)) / 2


def warmup_factor(elapsed: float, warmup: float, start_factor: float) -> float:
    """Linear warm-up from start_factor to 1 over the first `warmup` epochs, as
    torch.optim.lr_scheduler.LinearLR stepped once per iteration; 1 after."""
    if elapsed >= warmup:
        return 1.0
    return start_factor + (1 - start_factor) * elapsed / warmup


def schedule(
    kind: str,
    base_lr: float,
    n_epochs: int,
    *,
    lua: Callable[[int], float],
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_from: tuple[float, float] = (0.0, 0.01),
) -> Schedule:
    """lr_at(epoch, progress) for -lrSchedule kind: 'lua' (the rule `lua`), 'step' (x gamma
    from each epoch of steps on) or 'cosine' (to min_lr at the end, after the warm-up),
    multiplied by the warm-up factor during the first warmup_from[0] epochs (from the
    factor warmup_from[1])."""
    warmup, warmup_start = warmup_from

    def main(epoch: int, elapsed: float) -> float:
        if kind == "cosine":
            return cosine_lr(elapsed, base_lr, min_lr, warmup, n_epochs)
        if kind == "step":
            return base_lr * gamma ** sum(epoch >= s for s in steps)
        return lua(epoch)

    def lr_at(epoch: int, progress: float = 0.0) -> float:
        elapsed = epoch - 1 + progress
        return main(epoch, elapsed) * warmup_factor(elapsed, warmup, warmup_start)

    return lr_at
