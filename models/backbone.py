"""ResNet / ResNeXt (SE or not), SENet-154 and ResNeSt as a detection backbone, with
mmdetection's ResNet options: the stem and stages without pooling and classifier,
returning the stage outputs a detector needs (C2-C5), with style, per-stage strides and
dilations, frozen stages, BatchNorm kept in eval mode, and zero-initialised residual
branches. Frozen stages and normEval also apply to a whole classification network
(fine-tuning)."""

from collections.abc import Sequence

import torch
from torch import nn

from models.resnest import SplitAttentionBottleneck
from models.resnet import BasicBlock, Bottleneck, FreezableStages, ResNet

STYLES = ("pytorch", "caffe")  # the stride on the 3x3 (the Lua's) or on the first 1x1
N_STAGES = 4


def check_options(
    style: str, strides: Sequence[int], dilations: Sequence[int], out_indices: Sequence[int]
) -> None:
    """ValueError naming what is valid for mmdetection's options (set_frozen checks
    frozenStages)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    for name, values in (("strides", strides), ("dilations", dilations)):
        if len(values) != N_STAGES or min(values) < 1:
            raise ValueError(f"{name} must be {N_STAGES} integers of at least 1; got {values}")
    if not out_indices or any(i not in range(N_STAGES) for i in out_indices):
        raise ValueError(f"outIndices must be some of 0, 1, 2, 3; got {tuple(out_indices)}")


def stride_and_dilate(block: nn.Module, stride: int, dilation: int, style: str) -> None:
    """Give a built block another stride and dilation, where mmdetection puts them: the
    3x3 convolution (padding = dilation); with style caffe, the stride on the first 1x1."""
    if isinstance(block, SplitAttentionBottleneck):
        stride_and_dilate_split_attention(block, stride, dilation, style)
        return
    if isinstance(block, BasicBlock):
        strided, dilated = block.conv1, block.conv1
    elif isinstance(block, Bottleneck):
        strided = block.conv1 if style == "caffe" else block.conv2
        dilated = block.conv2
    else:
        raise ValueError(
            "the backbone takes resnet and resnext blocks (bottleneckType resnext_C or resnet)"
        )
    block.conv1.stride = block.conv2.stride = (1, 1)
    strided.stride = (stride, stride)
    dilated.dilation = dilated.padding = (dilation, dilation)
    if isinstance(block.shortcut, nn.Sequential):
        block.shortcut[0].stride = (stride, stride)
    elif stride != 1:
        raise ValueError("a stride on a block without a projection shortcut; use shortcutType B")


def stride_and_dilate_split_attention(
    block: SplitAttentionBottleneck, stride: int, dilation: int, style: str
) -> None:
    """ResNeSt's block as mmdetection's ResNeSt strides it: the 3x3 average pool after the
    split-attention convolution (style pytorch) or the first 1x1 (caffe); the shortcut's
    average pool at the stride."""
    on_pool = style == "pytorch" and stride > 1
    block.conv1.stride = (1, 1) if style == "pytorch" else (stride, stride)
    block.avd = nn.AvgPool2d(3, stride, padding=1) if on_pool else nn.Identity()
    block.conv2.conv.dilation = block.conv2.conv.padding = (dilation, dilation)
    if isinstance(block.shortcut, nn.Sequential):
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        block.shortcut[0] = pool if stride > 1 else nn.Identity()
    elif stride != 1:
        raise ValueError("a stride on a block without a projection shortcut")


def zero_init_residual(network: nn.Module) -> None:
    """The last BN gamma of every residual branch starts at 0: each block starts as its
    shortcut."""
    for block in network.modules():
        last = {BasicBlock: "bn2", Bottleneck: "bn3", SplitAttentionBottleneck: "bn3"}.get(
            type(block)
        )
        if last is not None:
            nn.init.zeros_(getattr(block, last).weight)


def set_frozen(network: FreezableStages, frozen_stages: int = -1, norm_eval: bool = False) -> None:
    """Freeze the stem (frozen_stages >= 0) and stages 1..frozen_stages: no gradients, BN
    in eval mode (kept through .train()); norm_eval keeps every BN in eval mode."""
    stages = len(network.stage_names)
    if frozen_stages not in range(-1, stages + 1):
        raise ValueError(f"frozenStages must be -1 (none) to {stages}; got {frozen_stages}")
    network.frozen_stages, network.norm_eval = frozen_stages, norm_eval
    for module in network.frozen_parts():
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    network.train(network.training)


class Backbone(FreezableStages):
    """A network's stem and stages; forward returns the outputs of out_indices' stages."""

    def __init__(self, network: ResNet, out_indices: Sequence[int]):
        super().__init__()
        self.stem = network.stem
        self.stage_names = network.stage_names
        for name in self.stage_names:
            self.add_module(name, getattr(network, name))
        self.out_indices = tuple(out_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outputs = []
        for index, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if index in self.out_indices:
                outputs.append(x)
        return tuple(outputs)


def backbone(
    network: ResNet,
    *,
    style: str = "pytorch",
    strides=(1, 2, 2, 2),
    dilations=(1, 1, 1, 1),
    out_indices=(0, 1, 2, 3),
    frozen_stages: int = -1,
    norm_eval: bool = False,
    zero_init: bool = False,
) -> Backbone:
    """The detection backbone of an ImageNet ResNet / ResNeXt (see models.backbone)."""
    check_options(style, strides, dilations, out_indices)
    for stage_index, name in enumerate(network.stage_names):
        for index, block in enumerate(getattr(network, name)):
            stride = strides[stage_index] if index == 0 else 1
            stride_and_dilate(block, stride, dilations[stage_index], style)
    if zero_init:
        zero_init_residual(network)
    result = Backbone(network, out_indices)
    set_frozen(result, frozen_stages, norm_eval)
    return result
