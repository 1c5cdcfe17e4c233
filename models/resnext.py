"""ResNeXt, as facebookresearch/ResNeXt's models/resnext.lua builds it.

Stage base widths n = 64, 128, 256(, 512); each block has C = cardinality groups of
per-group width D = floor(n * baseWidth / 64) and outputs 4n channels. Form C is one
grouped 3x3 convolution, form B the same function written as C explicit branches,
and 'resnet' the plain ResNet bottleneck.
"""

from collections import OrderedDict

import torch
from torch import nn

from errors import quoted
from models.resnet import (
    Bottleneck,
    ResNet,
    check_cifar_depth,
    check_imagenet_depth,
    check_se,
    cifar_stem,
    conv1x1,
    conv3x3,
    drop_branch,
    excitation,
    imagenet_stem,
    make_shortcut,
    make_stages,
)

BOTTLENECK_TYPES = ("resnet", "resnext_B", "resnext_C")
IMAGENET_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
IMAGENET_PLANES = (64, 128, 256, 512)
CIFAR_PLANES = (64, 128, 256)
DEPLOY_LINES = {
    "resnet": "Deploying ResNet bottleneck block",
    "resnext_B": "Deploying ResNeXt bottleneck block form B",
    "resnext_C": "Deploying ResNeXt bottleneck block form C (group convolution)",
}


def group_width(planes: int, base_width: int) -> int:
    """Per-group width D = floor(planes * baseWidth / 64), in exact integer arithmetic."""
    return planes * base_width // 64


class ResNeXtBranchesBlock(nn.Module):
    """Form B: C branches of conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU, concatenated,
    then conv1x1-BN(-SE), added to the shortcut, then ReLU."""

    def __init__(
        self,
        n_in: int,
        planes: int,
        stride: int,
        shortcut_type: str,
        cardinality: int,
        d: int,
        se: int = 0,
    ):
        super().__init__()
        n_out = planes * 4
        self.branches = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    conv1=conv1x1(n_in, d),
                    bn1=nn.BatchNorm2d(d),
                    relu1=nn.ReLU(inplace=True),
                    conv2=conv3x3(d, d, stride),
                    bn2=nn.BatchNorm2d(d),
                    relu2=nn.ReLU(inplace=True),
                )
            )
            for _ in range(cardinality)
        )
        self.conv3 = conv1x1(d * cardinality, n_out)
        self.bn3 = nn.BatchNorm2d(n_out)
        self.se = excitation(n_out, se)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(n_in, n_out, stride, shortcut_type)
        self.out_channels = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(drop_branch(self, out) + self.shortcut(x))


def check_arguments(bottleneck_type: str, base_width: int, cardinality: int) -> None:
    """ValueError for an unknown bottleneck type or a width that leaves D or C below 1."""
    if bottleneck_type not in BOTTLENECK_TYPES:
        raise ValueError(
            f"unknown bottleneckType {quoted(bottleneck_type)}; valid:"
            f" {', '.join(BOTTLENECK_TYPES)}"
        )
    if cardinality < 1:
        raise ValueError(f"cardinality must be at least 1; got {cardinality}")
    if group_width(64, base_width) < 1:
        raise ValueError(
            f"baseWidth {base_width} gives a per-group width D = floor(64 * baseWidth / 64)"
            " below 1; use baseWidth >= 1"
        )


def block_factory(planes, shortcut_type, bottleneck_type, base_width, cardinality, se=0):
    """Block constructor of the chosen form, for make_stages."""

    def block(stage, n_in, stride, _):
        n = planes[stage]
        if bottleneck_type == "resnet":
            return Bottleneck(n_in, n, stride, shortcut_type, se=se)
        d = group_width(n, base_width)
        if bottleneck_type == "resnext_B":
            return ResNeXtBranchesBlock(n_in, n, stride, shortcut_type, cardinality, d, se)
        return Bottleneck(n_in, n, stride, shortcut_type, cardinality, d * cardinality, se)

    return block


def build(
    depth: int,
    cifar: bool,
    n_classes: int,
    shortcut_type: str,
    bottleneck_type: str = "resnext_C",
    base_width: int = 64,
    cardinality: int = 1,
    se: int = 0,
) -> ResNet:
    """ResNeXt for ImageNet (50/101/152) or CIFAR (9n+2, 64-channel stem, no max-pool);
    with squeeze-and-excitation of ratio se in every block when se > 0 (SE-ResNeXt)."""
    check_arguments(bottleneck_type, base_width, cardinality)
    check_se(se)
    form = (shortcut_type, bottleneck_type, base_width, cardinality, se)
    if cifar:
        n = check_cifar_depth(depth, 9, "29, 38, 47, 56, 101")
        stages, n_features = make_stages(block_factory(CIFAR_PLANES, *form), 64, (n, n, n))
        return ResNet(cifar_stem(64), stages, n_features, n_classes)
    check_imagenet_depth(depth, tuple(IMAGENET_COUNTS), "resnext")
    block = block_factory(IMAGENET_PLANES, *form)
    stages, n_features = make_stages(block, 64, IMAGENET_COUNTS[depth])
    return ResNet(imagenet_stem(), stages, n_features, n_classes)
