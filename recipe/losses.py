"""The losses -loss names: the Lua's cross-entropy, and the binary cross-entropy of "ResNet
strikes back" (Wightman et al., 2021) as timm computes it (timm.loss.BinaryCrossEntropy)."""

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("ce", "bce")


class BinaryCrossEntropy(nn.Module):
    """Each class's logit against its own target, averaged over the batch and the classes.
    Class indices become one-hot rows; soft rows (-mixup / -cutmix) stay as they are. Label
    smoothing moves `smoothing` of each row to all classes evenly (timm's on value 1 - s +
    s / K and off value s / K); then, with a threshold, targets above it become 1 and the
    others 0 (0: no threshold)."""

    def __init__(self, smoothing: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.smoothing, self.threshold = smoothing, threshold

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[-1]
        if target.dim() == 1:
            target = F.one_hot(target, classes).to(logits.dtype)
        target = target * (1 - self.smoothing) + self.smoothing / classes
        if self.threshold:
            target = (target > self.threshold).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target)
