"""Post-activation ResNet, as fb.resnet.torch's models/resnet.lua builds it.

Also home of the pieces the other families share: the A/B/C shortcuts, the
bottleneck block (stride on the 3x3 convolution), the stems, the network shell
with size-adaptive average pooling, and the Lua's weight initialisation.
"""

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from errors import quoted

# depth -> (blocks per stage, block kind); models/resnet.lua's cfg table.
IMAGENET_STAGES = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}
IMAGENET_PLANES = (64, 128, 256, 512)
CIFAR_PLANES = (16, 32, 64)
SHORTCUT_TYPES = ("A", "B", "C")
MAX_CIFAR_DEPTH = 10_000  # far past ResNet-1202; guards against building a huge model by typo

# (stage index, in channels, stride, index within the stage) -> block with .out_channels
BlockFactory = Callable[[int, int, int, int], nn.Module]


def conv3x3(n_in: int, n_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias, as every Lua model uses."""
    return nn.Conv2d(n_in, n_out, 3, stride, 1, groups=groups, bias=False)


def conv1x1(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(n_in, n_out, 1, stride, 0, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut A: subsample by the stride and append zero channels up to n_out."""

    def __init__(self, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.extra_channels = n_out - n_in
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The Lua's 1x1 average pooling with a stride keeps the top-left pixel of each cell.
        x = x[:, :, :: self.stride, :: self.stride]
        zeros = x.new_zeros(x.shape[0], self.extra_channels, x.shape[2], x.shape[3])
        return torch.cat([x, zeros], dim=1)


def make_shortcut(
    n_in: int, n_out: int, stride: int, shortcut_type: str, with_bn: bool = True
) -> nn.Module:
    """The Lua's shortcut(nInputPlane, nOutputPlane, stride) for types A, B and C."""
    if shortcut_type not in SHORTCUT_TYPES:
        raise ValueError(f"unknown shortcutType {quoted(shortcut_type)}; valid: A, B, C")
    if shortcut_type == "C" or (shortcut_type == "B" and n_in != n_out):
        layers = [conv1x1(n_in, n_out, stride)]
        if with_bn:
            layers.append(nn.BatchNorm2d(n_out))
        return nn.Sequential(*layers)
    if n_in != n_out:
        if n_out != 2 * n_in:
            # The Lua appends exactly n_in zero channels, so A only fits basic blocks.
            raise ValueError(
                f"shortcutType A cannot map {n_in} to {n_out} channels (bottleneck blocks);"
                " use B or C"
            )
        return ZeroPadShortcut(n_in, n_out, stride)
    return nn.Identity()


def squeezed_width(channels: int, ratio: int, divisor: int = 8) -> int:
    """The squeeze width of channels / ratio, rounded to the nearest multiple of divisor
    (at least divisor), as timm's SE module rounds it."""
    return max(divisor, int(channels / ratio + divisor / 2) // divisor * divisor)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (SENet): global average pool, 1x1 conv to channels / ratio,
    ReLU, 1x1 conv back, sigmoid; the input scaled channel by channel."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        width = squeezed_width(channels, ratio)
        self.fc1 = nn.Conv2d(channels, width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


def excitation(channels: int, se: int) -> nn.Module | None:
    """The SE module of a block's output (se: the ratio; 0 for none)."""
    return SqueezeExcitation(channels, se) if se else None


def drop_branch(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A residual branch's output, dropped for whole samples by the block's stochastic
    depth when it has one (-dropPath: models.set_drop_path)."""
    drop = getattr(block, "drop_path", None)  # a submodule only when set
    return out if drop is None else drop(out)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN(-SE), added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, n_in: int, planes: int, stride: int, shortcut_type: str, se: int = 0):
        super().__init__()
        self.conv1 = conv3x3(n_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = excitation(planes, se)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(n_in, planes, stride, shortcut_type)
        self.out_channels = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(drop_branch(self, out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1-3x3(stride, groups)-1x1 bottleneck with 4x expansion (ResNet, ResNeXt form C),
    then SE when se (its ratio) is given.

    inner_width is the width of the 3x3 convolution: planes for ResNet,
    D * cardinality for ResNeXt; shortcut a -shortcutType (A, B, C) or the module itself.
    """

    expansion = 4

    def __init__(
        self,
        n_in: int,
        planes: int,
        stride: int,
        shortcut: str | nn.Module,
        cardinality: int = 1,
        inner_width: int | None = None,
        se: int = 0,
        first_width: int | None = None,
    ):
        super().__init__()
        inner = inner_width or planes
        first = first_width or inner  # SENet-154 halves the first 1x1's width
        n_out = planes * self.expansion
        self.conv1 = conv1x1(n_in, first)
        self.bn1 = nn.BatchNorm2d(first)
        self.conv2 = conv3x3(first, inner, stride, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, n_out)
        self.bn3 = nn.BatchNorm2d(n_out)
        self.se = excitation(n_out, se)
        self.relu = nn.ReLU(inplace=True)
        if isinstance(shortcut, str):  # a -shortcutType
            shortcut = make_shortcut(n_in, n_out, stride, shortcut)
        self.shortcut = shortcut
        self.out_channels = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(drop_branch(self, out) + self.shortcut(x))


def imagenet_stem(width: int = 64) -> nn.Sequential:
    """Conv 7x7/2 - BN - ReLU - MaxPool 3x3/2."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, width, 7, 2, 3, bias=False),
            bn=nn.BatchNorm2d(width),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(3, 2, 1),
        )
    )


def deep_stem(width: int) -> nn.Sequential:
    """ResNeSt's and SENet-154's: conv 3x3/2 (3 -> w), BN, ReLU, conv 3x3 (w -> w), BN,
    ReLU, conv 3x3 (w -> 2w), BN, ReLU, max-pool 3x3/2; numbered as timm numbers its stem
    (conv1.0 ... conv1.6, and bn1 = 7)."""
    layers = [
        conv3x3(3, width, 2),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        conv3x3(width, width),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        conv3x3(width, 2 * width),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    return nn.Sequential(OrderedDict((str(i), layer) for i, layer in enumerate(layers)))


def cifar_stem(width: int, with_bn: bool = True) -> nn.Sequential:
    """Conv 3x3/1, followed by BN - ReLU unless the network is pre-activated."""
    layers = OrderedDict(conv=conv3x3(3, width))
    if with_bn:
        layers["bn"] = nn.BatchNorm2d(width)
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def make_stages(
    block: BlockFactory, n_in: int, counts: Sequence[int]
) -> tuple[list[nn.Sequential], int]:
    """Stages of counts[i] blocks; the first block of every stage but the first has stride 2."""
    stages = []
    for stage_index, count in enumerate(counts):
        blocks = []
        for index in range(count):
            stride = 2 if stage_index > 0 and index == 0 else 1
            blocks.append(block(stage_index, n_in, stride, index))
            n_in = blocks[-1].out_channels
        stages.append(nn.Sequential(*blocks))
    return stages, n_in


class FreezableStages(nn.Module):
    """A module with a stem and stages layer1..layerN of which the stem and the first
    frozen_stages stay in eval mode through .train() (every BatchNorm with norm_eval);
    models.backbone.set_frozen sets both and takes their gradients."""

    frozen_stages, norm_eval = -1, False

    def frozen_parts(self) -> list[nn.Module]:
        """The stem and the first frozen_stages stages (none when it is -1)."""
        if self.frozen_stages < 0:
            return []
        return [self.stem, *(getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1))]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in self.frozen_parts():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


class ResNet(FreezableStages):
    """Stem, residual stages layer1..layerN, optional BN-ReLU, global average pool,
    dropout when given, Linear."""

    def __init__(
        self,
        stem: nn.Sequential,
        stages: Sequence[nn.Sequential],
        n_features: int,
        n_classes: int,
        final_bn: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.stem = stem
        self.stage_names = tuple(f"layer{i}" for i in range(1, len(stages) + 1))
        for name, stage in zip(self.stage_names, stages, strict=True):
            self.add_module(name, stage)
        self.final = (
            nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(n_features), relu=nn.ReLU(inplace=True)))
            if final_bn
            else nn.Identity()
        )
        # Adaptive pooling instead of the Lua's fixed 7x7 / 8x8 (its issues #192, #110):
        # identical at 224 / 32 and also valid at any other input size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(n_features, n_classes)
        # Activation checkpointing (the Lua's -optnet / -shareGradInput memory savers).
        self.checkpoint_blocks = False
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate-layer features (the input of fc)."""
        x = self.stem(x)
        for name in self.stage_names:
            for block in getattr(self, name):
                x = self.run_block(block, x)
        return torch.flatten(self.avgpool(self.final(x)), 1)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """block(x), or with checkpointing: keep only x and recompute the rest in backward."""
        if not (self.checkpoint_blocks and self.training and torch.is_grad_enabled()):
            return block(x)
        contexts = lambda: (nullcontext(), FrozenBatchNormStatistics(block))  # noqa: E731
        return checkpoint(block, x, use_reentrant=False, context_fn=contexts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class FrozenBatchNormStatistics:
    """While a checkpointed block is recomputed, its BatchNorms must not update their
    running statistics a second time: momentum 0 keeps them, and the batch counter is
    put back afterwards. The recomputed outputs use batch statistics, as the first pass."""

    def __init__(self, block: nn.Module):
        self.norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        self.saved = []

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.norms]
        for module in self.norms:
            module.momentum = 0.0
        return self

    def __exit__(self, *exc_info):
        for module, (momentum, count) in zip(self.norms, self.saved, strict=True):
            module.momentum = momentum
            module.num_batches_tracked.copy_(count)
        return False


def init_weights(model: nn.Module) -> None:
    """The Lua's ConvInit / BNInit / Linear bias init (weights of Linear keep the default)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # N(0, sqrt(2 / (kW * kH * nOutputPlane))): He init in fan-out mode.
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def check_cifar_depth(depth: int, per_stage: int, examples: str, extra: int = 2) -> int:
    """Blocks per stage n for a CIFAR depth of the form per_stage*n + extra (the layers
    outside the blocks), else ValueError."""
    if depth < per_stage + extra or (depth - extra) % per_stage or depth > MAX_CIFAR_DEPTH:
        raise ValueError(
            f"CIFAR depth must be {per_stage}n+{extra} up to {MAX_CIFAR_DEPTH} (e.g."
            f" {examples}); got {depth}"
        )
    return (depth - extra) // per_stage


def check_imagenet_depth(depth: int, valid: Sequence[int], family: str) -> None:
    """ValueError naming the valid ImageNet depths of a family."""
    if depth not in valid:
        raise ValueError(
            f"{family} ImageNet depth must be one of {', '.join(map(str, valid))}; got {depth}"
        )


def check_se(se: int) -> None:
    """ValueError for a negative SE ratio."""
    if se < 0:
        raise ValueError(
            f"se (the squeeze-and-excitation ratio) must be 0 (none) or more; got {se}"
        )


def build(depth: int, cifar: bool, n_classes: int, shortcut_type: str, se: int = 0) -> ResNet:
    """ResNet for ImageNet (18-152) or CIFAR (6n+2 basic blocks of widths 16/32/64); with
    squeeze-and-excitation of ratio se in every block when se > 0 (SE-ResNet)."""
    check_se(se)
    if cifar:
        n = check_cifar_depth(depth, 6, "20, 32, 44, 56, 110, 1202")

        def block(stage, n_in, stride, _):
            return BasicBlock(n_in, CIFAR_PLANES[stage], stride, shortcut_type, se)

        stages, n_features = make_stages(block, 16, (n, n, n))
        return ResNet(cifar_stem(16), stages, n_features, n_classes)

    check_imagenet_depth(depth, tuple(IMAGENET_STAGES), "resnet")
    counts, kind = IMAGENET_STAGES[depth]

    def block(stage, n_in, stride, _):
        if kind == "basic":
            return BasicBlock(n_in, IMAGENET_PLANES[stage], stride, shortcut_type, se)
        return Bottleneck(n_in, IMAGENET_PLANES[stage], stride, shortcut_type, se=se)

    stages, n_features = make_stages(block, 64, counts)
    return ResNet(imagenet_stem(), stages, n_features, n_classes)
