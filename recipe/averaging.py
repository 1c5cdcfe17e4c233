"""-ema: an exponential moving average of the trained weights (and BatchNorm statistics),
torch.optim.swa_utils.AveragedModel's, evaluated instead of the trained weights."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from errors import UsageError


class AverageError(UsageError):
    """An average that a run would drop, or never update."""


def check_start(
    saved: dict | None, decay: float, every: int, steps_per_epoch: int, resumed: str
) -> None:
    """Before training: an average the resumed checkpoint (folder `resumed`) keeps is never
    dropped (its -ema must be given again: decay 0 is none), and one that `every` would
    never update within an epoch is refused."""
    if saved is not None and not decay:
        was = f" {saved['decay']:g} -emaEvery {saved['every']}" if "decay" in saved else ""
        raise AverageError(
            f"{resumed} keeps an average of the weights (-ema): resume with -ema{was}, or"
            " start from its weights with -retrain (which leaves the average behind)"
        )
    if decay and every > steps_per_epoch:
        raise AverageError(
            f"-emaEvery {every} is more than the {steps_per_epoch} steps of an epoch: the"
            f" average would never be updated; use -emaEvery {steps_per_epoch} or less"
        )


class ExponentialAverage:
    """Averages `model` every `every` training steps of an epoch, with decay ** every per
    update (decay is per step, so the average spans the same steps whatever `every`);
    during the first `warmup` epochs it follows the weights (torchvision's rule: an
    average of warm-up weights would drag the run's start along)."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1, warmup: float = 0.0):
        self.source = model
        self.decay, self.every = decay, every
        self.warmup = warmup
        average = get_ema_multi_avg_fn(decay**every)
        self.averaged = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged network, a model of the trained one's class."""
        return self.averaged.module

    @torch.no_grad()
    def after_step(self, epoch: int, iteration: int) -> None:
        """Update after the step of `iteration` (1-based, in the epoch) when it is due."""
        if iteration % self.every:
            return
        self.averaged.update_parameters(self.source)
        if epoch - 1 < self.warmup:
            self.averaged.n_averaged.fill_(0)  # the next update copies the weights

    def state_dict(self) -> dict:
        """The averaged weights and buffers, how many updates they average, and the decay
        and update interval that made them."""
        return {
            "model": self.module.state_dict(),
            "updates": int(self.averaged.n_averaged),
            "decay": self.decay,
            "every": self.every,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved average."""
        self.module.load_state_dict(state["model"])
        self.averaged.n_averaged.fill_(state["updates"])
