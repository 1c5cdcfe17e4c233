"""The training recipe of a run as objects: the loss, the optimizer and its -optimState, the
learning-rate schedule, batch mixing, the weight average, and the Trainer that uses them."""

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

import checkpoints
from datasets import mixing
from recipe import averaging, losses, optimizers, schedules
from runtime import launch
from runtime.launch import Processes


@dataclass(frozen=True)
class Recipe:
    """How the network is trained: the loss, the optimizer and its start, the learning-rate
    schedule, batch mixing, the weight average, and how often the step prints."""

    schedule: schedules.Schedule  # the LR at (epoch, progress): the only source of the LR
    optimizer: str = "sgd"  # optimizers.OPTIMIZERS
    momentum: float = 0.9
    nesterov: bool = True  # the Lua's; False: plain momentum
    weight_decay: float = 1e-4
    norm_weight_decay: float | None = None  # None: weight_decay
    bias_weight_decay: float | None = None  # None: as the other weights of its layer
    optim_state: str = "none"  # a file to start the optimizer from
    label_smoothing: float = 0.0
    loss: str = "ce"  # losses.LOSSES
    bce_target_threshold: float = 0.0  # -loss bce: 0, the targets as they are
    clip_grad_norm: float = 0.0
    accum_steps: int = 1  # micro-batches per optimizer step (-batchSize is the step's batch)
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    ema_every: int = 1
    warmup_epochs: float = 0.0
    print_every: int | None = 1  # None: -printFreq auto (Progress.interval)


def make_optimizer(model: nn.Module, spec: Recipe, checkpoint) -> torch.optim.Optimizer:
    """-optimizer (the Lua's SGD by default) with -normWeightDecay / -biasWeightDecay groups;
    state from -resume or -optimState, which must be of the same optimizer."""
    groups = optimizers.parameter_groups(
        model, spec.weight_decay, spec.norm_weight_decay, spec.bias_weight_decay
    )
    start = spec.schedule(1, 0.0)  # a start only: the step sets every iteration's LR from it
    optimizer = optimizers.make(spec.optimizer, groups, start, spec.momentum, spec.nesterov)
    state = checkpoint.optimizer if checkpoint else None
    if state is None and spec.optim_state != "none":
        state = checkpoints.load_file(spec.optim_state)
    if state is not None:
        if (saved := optimizers.saved_name(state)) != spec.optimizer:
            raise checkpoints.CheckpointError(
                f"the optimizer state is of -optimizer {saved}, not {spec.optimizer}: resume"
                f" with -optimizer {saved}, or start a new run"
            )
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise checkpoints.CheckpointError(
                f"optimizer state does not fit this network and its parameter groups (resume"
                f" with the -normWeightDecay / -biasWeightDecay it was saved with): {exc}"
            ) from None
        check_momentum_kind(optimizer, spec)
    return optimizer


def check_momentum_kind(optimizer: torch.optim.Optimizer, spec: Recipe) -> None:
    """A loaded optimizer state brings its own Nesterov setting: it must be the one asked for."""
    saved = optimizer.param_groups[0].get("nesterov", True)
    if spec.optimizer in ("sgd", "lars") and spec.momentum > 0 and saved != spec.nesterov:
        raise checkpoints.CheckpointError(
            f"the optimizer state was saved with -nesterov {str(saved).lower()}: resume with"
            " it, or start a new run"
        )


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """values summed over the processes of the distributed run."""
    dist.all_reduce(values)
    return values


def loss(spec: Recipe) -> nn.Module:
    """-loss: cross-entropy, or binary cross-entropy (its targets past -bceTargetThreshold),
    with -labelSmoothing."""
    if spec.loss == "bce":
        return losses.BinaryCrossEntropy(spec.label_smoothing, spec.bce_target_threshold)
    return nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)


def step_agreement(skip_corrupt: bool, processes: Processes):
    """With -skipCorrupt a process may get no readable image of a batch: every process then
    leaves that step out, so that their gradient all-reduces stay paired. The check that
    a flag holds in every process, or None where no step is left out."""
    if processes.world > 1 and skip_corrupt:
        return partial(launch.every_process, processes=processes)
    return None


def batch_mixing(spec: Recipe, n_outputs: int, seed: int):
    """-mixup / -cutmix on the training batches (their draws from seed), or None."""
    if not (spec.mixup or spec.cutmix):
        return None
    print(
        f"=> Mixing training batches (-mixup {spec.mixup:g} -cutmix {spec.cutmix:g}): the"
        " training errors are against each mixed image's dominant class"
    )
    return mixing.BatchMixing(n_outputs, mixup=spec.mixup, cutmix=spec.cutmix, seed=seed)


def weight_average(spec: Recipe, trained: nn.Module, checkpoint):
    """-ema: the average of the trained weights (the -resume checkpoint's when it has one),
    or None."""
    if not spec.ema:
        return None
    average = averaging.ExponentialAverage(
        checkpoints.unwrap(trained), spec.ema, spec.ema_every, spec.warmup_epochs
    )
    saved = checkpoint.model.average if checkpoint else None
    if saved is not None:
        average.load_state_dict(saved)
    elif checkpoint:
        print("=> The resumed checkpoint has no -ema average: it starts from the weights")
    return average
