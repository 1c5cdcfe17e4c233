"""-ema: an exponential moving average of the trained weights (and BatchNorm statistics),
torch.optim.swa_utils.AveragedModel's, evaluated instead of the trained weights."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


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
        return {"model": self.module.state_dict(), "updates": int(self.averaged.n_averaged),
                "decay": self.decay, "every": self.every}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved average."""
        self.module.load_state_dict(state["model"])
        self.averaged.n_averaged.fill_(state["updates"])
