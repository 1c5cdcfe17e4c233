"""The training recipe of a run as objects: the loss, the optimizer and its -optimState, the
learning-rate schedule, batch mixing, the weight average, and the Trainer that uses them."""

import math
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

import averaging
import checkpoints
import launch
import optimizers
import opts as options
import schedules
import train
from datasets import mixing
from launch import Processes
from models import setup


def learning_rate_schedule(opts) -> schedules.Schedule:
    """-lrSchedule with its options: the Lua's per-dataset rule by default."""
    lua = schedules.lua_rule(opts.dataset, opts.netType, opts.LR, opts.nEpochs)
    return schedules.schedule(opts.lrSchedule, opts.LR, opts.nEpochs, lua=lua,
                              steps=opts.lrSteps, gamma=opts.lrGamma, min_lr=opts.lrMin,
                              warmup=opts.warmupEpochs, warmup_start=opts.warmupStart)  # fmt: skip


def make_optimizer(model: nn.Module, opts, checkpoint) -> torch.optim.Optimizer:
    """The Lua's SGD with -normWeightDecay / -biasWeightDecay groups; state from -resume or
    -optimState."""
    optimizer = optimizers.sgd(model, opts.LR, opts.momentum, opts.weightDecay,
                               opts.normWeightDecay, opts.biasWeightDecay)  # fmt: skip
    state = checkpoint["optimState"] if checkpoint else None
    if state is None and opts.optimState != "none":
        state = checkpoints.load_file(opts.optimState)
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise checkpoints.CheckpointError(
                f"optimizer state does not fit this network and its parameter groups (resume"
                f" with the -normWeightDecay / -biasWeightDecay it was saved with): {exc}"
            ) from None
    return optimizer


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """values summed over the processes of the distributed run."""
    dist.all_reduce(values)
    return values


def make_trainer(opts, model, device, checkpoint, processes: Processes,
                 progress=None) -> train.Trainer:  # fmt: skip
    """The Trainer for the options, with the optimizer and loss scale of -resume."""
    dtype, autocast_dtype = launch.precision_settings(opts.precision, device)
    trained, evaluated = setup.prepare_model(opts, model, device, (dtype, autocast_dtype),
                                       processes.world)  # fmt: skip
    distributed = processes.world > 1
    trainer = train.Trainer(
        trained,
        nn.CrossEntropyLoss(label_smoothing=opts.labelSmoothing),
        make_optimizer(trained, opts, checkpoint),
        learning_rate_schedule(opts),
        device=device,
        n_crops=10 if opts.tenCrop else 1,
        memory_format=launch.MEMORY_FORMATS[opts.memoryFormat],
        dtype=dtype,
        autocast_dtype=autocast_dtype,
        print_every=opts.printFreq,
        clip_grad_norm=opts.clipGradNorm,
        reduce=sum_over_processes if distributed else None,
        progress=progress,
        evaluated=evaluated,
        # With -skipCorrupt a process may get no readable image of a batch: every process
        # then leaves that step out, so that their gradient all-reduces stay paired.
        every_process=partial(launch.every_process, processes=processes)
        if distributed and opts.skipCorrupt
        else None,
        mix=batch_mixing(opts, checkpoints.unwrap(trained).fc.out_features),
        average=weight_average(opts, trained, checkpoint),
    )
    if checkpoint and checkpoint["state"].get("scaler"):
        trainer.scaler.load_state_dict(checkpoint["state"]["scaler"])  # fp16 loss scale
    return trainer


def batch_mixing(opts, n_outputs: int):
    """-mixup / -cutmix on the training batches, or None."""
    if opts.testOnly or not (opts.mixup or opts.cutmix):
        return None
    print(f"=> Mixing training batches (-mixup {opts.mixup:g} -cutmix {opts.cutmix:g}): the"
          " training errors are against each mixed image's dominant class")  # fmt: skip
    return mixing.BatchMixing(n_outputs, mixup=opts.mixup, cutmix=opts.cutmix,
                              seed=opts.manualSeed + 2)  # fmt: skip


def weight_average(opts, trained: nn.Module, checkpoint):
    """-ema: the average of the trained weights (the -resume checkpoint's when it has one),
    or None."""
    if opts.testOnly or not opts.ema:
        return None
    average = averaging.ExponentialAverage(checkpoints.unwrap(trained), opts.ema,
                                           opts.emaEvery, opts.warmupEpochs)  # fmt: skip
    saved = checkpoint["model"].get("ema") if checkpoint else None
    if saved is not None:
        average.load_state_dict(saved)
    elif checkpoint:
        print("=> The resumed checkpoint has no -ema average: it starts from the weights")
    return average


REFERENCE_BATCH = {"imagenet": 256}  # the recipes' batch for -LR 0.1; CIFAR's is 128


def linear_scaling_note(opts) -> None:
    """Say once what -LR the linear scaling rule gives when the user changed -batchSize to
    another than the recipe's (-recipe's, else the Lua's) and left -LR at the recipe's."""
    given = getattr(opts, "given", ())
    if opts.testOnly or "batchSize" not in given or "LR" in given:
        return
    recipe = options.recipe_values(opts.recipe, opts.dataset)
    reference = recipe.get("batchSize", REFERENCE_BATCH.get(opts.dataset, 128))
    base = recipe.get("LR", 0.1)
    suggested = base * opts.batchSize / reference
    if opts.batchSize != reference and not math.isclose(opts.LR, suggested):
        print(
            f"=> Note: -batchSize {opts.batchSize} is not the recipe's {reference}; the linear"
            f" scaling rule suggests -LR {suggested:g} ({base:g} x {opts.batchSize}/{reference})"
        )
