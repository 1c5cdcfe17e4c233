"""ResNeSt (split-attention networks), as the ResNeSt authors' package and timm's
resnest*d / resnest*e build them, in this package's ResNet shell.

A deep stem (three 3x3 convolutions of widths w, w, 2w with w = 32 up to depth 50 and 64
above, then BN, ReLU and a 3x3/2 max-pool); bottlenecks whose 3x3 convolution is a
split-attention convolution (radix splits of `cardinality` groups each, weighted by a
softmax across the splits computed from their pooled sum); "avd": the first block of
stages 2-4 convolves at stride 1 and a 3x3/2 average pool follows; "average down"
shortcuts: a 2x2 average pool at the stride, then a 1x1 convolution and BN.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.resnet import (
    ResNet,
    check_imagenet_depth,
    conv1x1,
    conv3x3,
    deep_stem,
    drop_branch,
    make_stages,
)
from models.resnext import group_width

IMAGENET_COUNTS = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    200: (3, 24, 36, 3),
    269: (3, 30, 48, 8),
}
IMAGENET_PLANES = (64, 128, 256, 512)


def attention_width(channels: int, radix: int, divisor: int = 8) -> int:
    """Width of the attention's hidden layer: a quarter of channels x radix, rounded to the
    nearest multiple of divisor, at least 32 and not below 90% of the unrounded value."""
    wanted = channels * radix / 4
    width = max(32, int(wanted + divisor / 2) // divisor * divisor)
    return width + divisor if width < 0.9 * wanted else width


class SplitAttentionConv(nn.Module):
    """3x3 convolution into radix splits of `cardinality` groups, BN, ReLU; the splits'
    sum is pooled, and a 1x1 conv (with bias), BN, ReLU, 1x1 conv give each split's weight
    per channel: a softmax across the splits (a sigmoid when radix is 1)."""

    def __init__(self, channels: int, stride: int, cardinality: int, radix: int):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality
        hidden = attention_width(channels, radix)
        self.conv = conv3x3(channels, channels * radix, stride, groups=cardinality * radix)
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, hidden, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        batch, channels = x.shape[0], x.shape[1] // self.radix
        splits = x.view(batch, self.radix, channels, *x.shape[2:])
        pooled = splits.sum(1).mean((2, 3), keepdim=True)
        weights = self.fc2(self.relu(self.attention_norm(self.fc1(pooled))))
        if self.radix == 1:
            return x * weights.sigmoid()
        # The fc2 outputs are ordered (group, split, channel): softmax across the splits.
        weights = weights.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
        weights = weights.softmax(1).reshape(batch, self.radix, channels, 1, 1)
        return (splits * weights).sum(1)

    def attention_norm(self, pooled: torch.Tensor) -> torch.Tensor:
        """bn1; for a single image in training, where a pooled vector has no batch to be
        normalised over, with the running statistics (and without updating them). A
        -syncBN norm normalises over every process's images: it is always called, so that
        its all-reduces pair up."""
        alone = self.training and pooled.shape[0] == 1 and type(self.bn1) is nn.BatchNorm2d
        if not alone:
            return self.bn1(pooled)
        norm = self.bn1
        return F.batch_norm(
            pooled,
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            training=False,
            eps=norm.eps,
        )


def average_down_shortcut(n_in: int, n_out: int, stride: int) -> nn.Module:
    """Identity, or 2x2 average pool at the stride (none at stride 1), 1x1 conv, BN."""
    if n_in == n_out and stride == 1:
        return nn.Identity()
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(
        pool if stride > 1 else nn.Identity(), conv1x1(n_in, n_out), nn.BatchNorm2d(n_out)
    )


class SplitAttentionBottleneck(nn.Module):
    """1x1-BN-ReLU, split-attention 3x3 (at stride 1, then a 3x3 average pool at the
    block's stride), 1x1-BN, added to the average-down shortcut, then ReLU; 4x expansion."""

    def __init__(
        self, n_in: int, planes: int, stride: int, cardinality: int, base_width: int, radix: int
    ):
        super().__init__()
        width = group_width(planes, base_width) * cardinality
        n_out = planes * 4
        self.conv1 = conv1x1(n_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SplitAttentionConv(width, 1, cardinality, radix)
        self.avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        self.conv3 = conv1x1(width, n_out)
        self.bn3 = nn.BatchNorm2d(n_out)
        self.shortcut = average_down_shortcut(n_in, n_out, stride)
        self.out_channels = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.avd(self.conv2(out))))
        return self.relu(drop_branch(self, out) + self.shortcut(x))


def check_arguments(radix: int, cardinality: int, base_width: int) -> None:
    """ValueError for a radix, cardinality or width below 1."""
    for name, value in (("radix", radix), ("cardinality", cardinality), ("baseWidth", base_width)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")


def build(
    depth: int, n_classes: int, radix: int = 2, cardinality: int = 1, base_width: int = 64
) -> ResNet:
    """ResNeSt for ImageNet-shaped images: depths 14, 26, 50, 101, 200, 269."""
    check_arguments(radix, cardinality, base_width)
    check_imagenet_depth(depth, tuple(IMAGENET_COUNTS), "resnest")
    stem_width = 32 if depth <= 50 else 64

    def block(stage, n_in, stride, _):
        return SplitAttentionBottleneck(
            n_in, IMAGENET_PLANES[stage], stride, cardinality, base_width, radix
        )

    stages, n_features = make_stages(block, 2 * stem_width, IMAGENET_COUNTS[depth])
    return ResNet(deep_stem(stem_width), stages, n_features, n_classes)
