"""Wide Residual Networks (Zagoruyko and Komodakis, BMVC 2016), as their Lua code, a fork of
fb.resnet.torch, builds them for CIFAR-sized images: a 3x3 convolution to 16 channels, three
stages of n pre-activated basic blocks of widths 16k, 32k and 64k (depth 6n + 4), BN-ReLU,
global average pooling and the classifier.

A block whose width or stride changes activates its input once for both paths and projects
the shortcut with a 1x1 convolution; the others activate the residual path alone and keep
the identity (their wide_basic). Dropout, when given, sits between the two convolutions.
"""

from torch import nn

from models.preresnet import PreActBlock
from models.resnet import ResNet, check_cifar_depth, cifar_stem, conv3x3, make_stages

WIDTHS = (16, 32, 64)  # times the widening factor k


class WideBlock(PreActBlock):
    """[BN-ReLU] - conv3x3(stride) - BN - ReLU - dropout - conv3x3."""

    def __init__(self, n_in: int, width: int, stride: int, dropout: float):
        place = "residual" if n_in == width and stride == 1 else "both"
        super().__init__(n_in, width, stride, "B", place)
        self.conv1 = conv3x3(n_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(width, width)

    def residual(self, x):
        return self.conv2(self.dropout(self.relu(self.bn1(self.conv1(x)))))


def build(depth: int, n_classes: int, widen_factor: int, dropout: float) -> ResNet:
    """WRN-depth-k: 6n + 4 layers, widths 16k, 32k, 64k, dropout between the convolutions."""
    n = check_cifar_depth(depth, 6, "16, 22, 28, 40", extra=4)
    if widen_factor < 1:
        raise ValueError(f"widenFactor must be at least 1; got {widen_factor}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")

    def block(stage, n_in, stride, index):
        return WideBlock(n_in, WIDTHS[stage] * widen_factor, stride, dropout)

    stages, n_features = make_stages(block, 16, (n, n, n))
    return ResNet(cifar_stem(16, with_bn=False), stages, n_features, n_classes, final_bn=True)
