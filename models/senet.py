"""SENet-154, the ILSVRC 2017 winner: "a ResNeXt-152 (64 x 4d) with the Squeeze-and-
Excitation module" (the ResNeXt README), as timm's senet154 builds it.

On the SE-ResNeXt bottleneck (64 groups of width 4 at the first stage, SE of ratio 16):
the deep 3x3 stem of widths 64, 64, 128; the first 1x1 convolution of each block half as
wide as the grouped 3x3; shortcuts that change the resolution are 3x3 stride-2
convolutions (1x1 where only the width changes); dropout 0.2 before the classifier.
"""

from torch import nn

from models.resnet import Bottleneck, ResNet, check_imagenet_depth, deep_stem, make_stages
from models.resnext import IMAGENET_COUNTS as RESNEXT_COUNTS
from models.resnext import IMAGENET_PLANES, group_width

IMAGENET_COUNTS = {154: RESNEXT_COUNTS[152]}  # 152 + the two extra stem convolutions
CARDINALITY, BASE_WIDTH, SE_RATIO, DROPOUT = 64, 4, 16, 0.2


def projection_shortcut(n_in: int, n_out: int, stride: int) -> nn.Module:
    """Identity; a 3x3 stride-2 convolution and BN at a resolution change; else 1x1."""
    if n_in == n_out and stride == 1:
        return nn.Identity()
    kernel = 3 if stride > 1 else 1
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(n_out)
    )


def build(depth: int, n_classes: int) -> ResNet:
    """SENet-154 (its only depth)."""
    check_imagenet_depth(depth, tuple(IMAGENET_COUNTS), "senet")

    def block(stage, n_in, stride, _):
        planes = IMAGENET_PLANES[stage]
        width = group_width(planes, BASE_WIDTH) * CARDINALITY
        shortcut = projection_shortcut(n_in, planes * Bottleneck.expansion, stride)
        return Bottleneck(
            n_in,
            planes,
            stride,
            shortcut,
            CARDINALITY,
            width,
            SE_RATIO,
            first_width=width // 2,
        )

    stages, n_features = make_stages(block, 128, IMAGENET_COUNTS[depth])
    return ResNet(deep_stem(64), stages, n_features, n_classes, dropout=DROPOUT)
