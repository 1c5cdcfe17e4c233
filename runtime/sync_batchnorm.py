"""Batch normalisation over the global batch of a distributed run, on any device.

torch.nn.SyncBatchNorm only runs on GPUs; this one computes the batch statistics from
per-channel sums (then sums of squared deviations) all-reduced across processes (gloo or
nccl), with autograd through the all-reduce, so the gradients are those of one process
holding the whole batch.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of every process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        # Statistics in float32 for half inputs, in the buffers' float64 for double ones.
        local = x.to(torch.promote_types(x.dtype, self.running_mean.dtype))
        count = torch.full((1,), local.numel() / channels, dtype=local.dtype, device=x.device)
        sums = dist_nn.all_reduce(torch.cat((local.sum((0, 2, 3)), count)))
        n = sums[-1]
        mean = sums[:channels] / n
        # Two passes, as BatchNorm2d: E[x^2] - E[x]^2 loses digits when the mean is large.
        centred = local - mean.view(1, -1, 1, 1)
        var = dist_nn.all_reduce((centred * centred).sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def convert(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of module (in place) by a GlobalBatchNorm2d with its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            replacement.load_state_dict(child.state_dict())
            replacement.to(child.weight.device, child.weight.dtype)
            setattr(module, name, replacement)
        else:
            convert(child)
    return module
