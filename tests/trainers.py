"""A trainer on the CPU built from its parts, as the tests use one alone."""

import torch
from torch import nn

import train
from progress import Progress


def cpu_trainer(model, optimizer, lr_at, *, criterion=None, log=None, clip_grad_norm=0.0,
                reduce=None, every_process=None, **parts) -> train.Trainer:  # fmt: skip
    """train.trainer_of a CPU step of model (cross-entropy unless criterion), printing to
    log (default: nowhere), summing over processes with reduce and agreeing on steps with
    every_process; parts: n_crops, mix, average."""
    placement = train.Placement(torch.device("cpu"), clip_grad_norm=clip_grad_norm)
    step = train.Step(model, criterion or nn.CrossEntropyLoss(), optimizer, lr_at, placement)
    trainer = train.trainer_of(step, Progress(log or (lambda _: None)), **parts)
    trainer.reporting.reduce, trainer.every_process = reduce, every_process
    return trainer
