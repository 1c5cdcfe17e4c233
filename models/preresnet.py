"""Full pre-activation ResNet, as fb.resnet.torch's models/preresnet.lua builds it.

Each block's pre-activation (BN-ReLU) sits in one of three places, as the Lua's:
'none' for the very first ImageNet block (its input was just activated by the stem),
'both' for the first block of every other stage (shortcut and residual see BN-ReLU(x)),
'residual' for all others (the shortcut sees x itself). There is no ReLU after the
addition, and projection shortcuts have no BN.
"""

import torch
from torch import nn

from models.resnet import (
    CIFAR_PLANES,
    IMAGENET_PLANES,
    IMAGENET_STAGES,
    ResNet,
    check_cifar_depth,
    check_imagenet_depth,
    cifar_stem,
    conv1x1,
    conv3x3,
    drop_branch,
    imagenet_stem,
    make_shortcut,
    make_stages,
)

PREACT_PLACES = ("none", "both", "residual")
STAGES = {**IMAGENET_STAGES, 200: ((3, 24, 36, 3), "bottleneck")}


class PreActBlock(nn.Module):
    """Shared forward of the pre-activated blocks; subclasses define residual(x)."""

    def __init__(self, n_in: int, n_out: int, stride: int, shortcut_type: str, preact: str):
        super().__init__()
        if preact not in PREACT_PLACES:
            raise ValueError(f"unknown pre-activation {preact!r}; valid: {PREACT_PLACES}")
        self.preact = preact
        if preact != "none":
            self.preact_bn = nn.BatchNorm2d(n_in)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(n_in, n_out, stride, shortcut_type, with_bn=False)
        self.out_channels = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact == "none":
            return drop_branch(self, self.residual(x)) + self.shortcut(x)
        # Not in place: with preact 'residual' the shortcut still needs the raw x.
        activated = torch.relu(self.preact_bn(x))
        shortcut_input = activated if self.preact == "both" else x
        return drop_branch(self, self.residual(activated)) + self.shortcut(shortcut_input)


class PreActBasicBlock(PreActBlock):
    """[BN-ReLU] - conv3x3(stride) - BN - ReLU - conv3x3."""

    def __init__(self, n_in: int, planes: int, stride: int, shortcut_type: str, preact: str):
        super().__init__(n_in, planes, stride, shortcut_type, preact)
        self.conv1 = conv3x3(n_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))


class PreActBottleneck(PreActBlock):
    """[BN-ReLU] - conv1x1 - BN - ReLU - conv3x3(stride) - BN - ReLU - conv1x1(4x)."""

    def __init__(self, n_in: int, planes: int, stride: int, shortcut_type: str, preact: str):
        super().__init__(n_in, planes * 4, stride, shortcut_type, preact)
        self.conv1 = conv1x1(n_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.conv3(out)


def preact_place(stage: int, index: int, imagenet: bool) -> str:
    """Where block `index` of stage `stage` puts its BN-ReLU (the Lua's layer() type)."""
    if index > 0:
        return "residual"
    return "none" if imagenet and stage == 0 else "both"


def build(depth: int, cifar: bool, n_classes: int, shortcut_type: str) -> ResNet:
    """PreResNet for ImageNet (18-200) or CIFAR (6n+2 basic blocks of widths 16/32/64)."""
    if cifar:
        n = check_cifar_depth(depth, 6, "20, 32, 44, 56, 110, 1202")

        def block(stage, n_in, stride, index):
            place = preact_place(stage, index, imagenet=False)
            return PreActBasicBlock(n_in, CIFAR_PLANES[stage], stride, shortcut_type, place)

        stages, n_features = make_stages(block, 16, (n, n, n))
        return ResNet(cifar_stem(16, with_bn=False), stages, n_features, n_classes, True)

    check_imagenet_depth(depth, tuple(STAGES), "preresnet")
    counts, kind = STAGES[depth]

    def block(stage, n_in, stride, index):
        cls = PreActBasicBlock if kind == "basic" else PreActBottleneck
        place = preact_place(stage, index, imagenet=True)
        return cls(n_in, IMAGENET_PLANES[stage], stride, shortcut_type, place)

    stages, n_features = make_stages(block, 64, counts)
    return ResNet(imagenet_stem(), stages, n_features, n_classes, final_bn=True)
