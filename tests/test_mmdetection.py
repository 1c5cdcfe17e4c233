"""models.backbone against mmdetection's own ResNet / ResNeXt backbones (mmdet 3.3 as the
oracle): the same parameters under torchvision's names, the same stage outputs, the same
multiply-adds, and the same meaning of style, strides, dilations, out_indices, frozen_stages,
norm_eval and zero_init_residual."""

import pytest
import torch
from mmdetection import backbones
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models
from models import convert

# (our netType, depth, cardinality, baseWidth), then the options in mmdetection's spelling.
CASES = [
    (("resnext", 50, 32, 4), {}),
    (("resnet", 50, 1, 64), {"style": "caffe", "strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 2)}),
    (("resnet", 18, 1, 64), {"out_indices": (1, 3), "frozen_stages": 2, "norm_eval": True}),
    (("resnext", 50, 32, 4), {"style": "caffe", "frozen_stages": 0, "dilations": (1, 1, 2, 4),
                              "strides": (1, 2, 1, 1)}),
    (("resnext", 101, 64, 4), {"frozen_stages": 4}),
    # mmdet's ResNeXt ignores zero_init_residual (its block is a subclass of the Bottleneck
    # its check compares with by identity): its ResNet is the reference.
    (("resnet", 50, 1, 64), {"zero_init_residual": True}),
    (("resnet", 34, 1, 64), {"zero_init_residual": True, "norm_eval": True}),
]  # fmt: skip
# Our defaults where mmdetection's differ (its ResNet defaults to norm_eval and
# zero_init_residual True); said explicitly to both.
MMDET_DEFAULTS_OF_OURS = {"norm_eval": False, "zero_init_residual": False}
OURS = {"style": "style", "strides": "strides", "dilations": "dilations",
        "out_indices": "outIndices", "frozen_stages": "frozenStages",
        "norm_eval": "normEval", "zero_init_residual": "zeroInitResidual"}  # fmt: skip


def both(network, options):
    """(mmdetection's backbone, ours) with the same options and mmdet's weights in ours."""
    net_type, depth, cardinality, base_width = network
    options = {**MMDET_DEFAULTS_OF_OURS, **options}
    resnet, resnext = backbones()
    torch.manual_seed(0)
    if net_type == "resnext":
        theirs = resnext(depth=depth, groups=cardinality, base_width=base_width, **options)
    else:
        theirs = resnet(depth=depth, **options)
    theirs.init_weights()  # where mmdet applies zero_init_residual
    ours = models.backbone(net_type, depth, cardinality=cardinality, baseWidth=base_width,
                           **{OURS[k]: v for k, v in options.items()})  # fmt: skip
    return theirs, ours


def multiply_adds(network, size=224) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.randn(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(("network", "options"), CASES)
def test_the_backbone_is_mmdetections_with_the_same_options(network, options):
    theirs, ours = both(network, options)
    their_state = theirs.state_dict()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    converted = convert.to_torchvision(ours.state_dict())
    assert converted.keys() == their_state.keys()
    zeroed = {k for k, v in their_state.items() if k.endswith("weight") and not v.any()}
    assert zeroed == {k for k, v in converted.items() if k.endswith("weight") and not v.any()}
    theirs.load_state_dict(converted, strict=True)  # ours loads into mmdet by these names
    theirs.train(), ours.train()  # frozen stages and norm_eval act in train()
    trainable = {k for k, p in theirs.named_parameters() if p.requires_grad}
    assert trainable == set(convert.to_torchvision(
        {k: p for k, p in ours.named_parameters() if p.requires_grad}))  # fmt: skip
    their_modes = {k: m.training for k, m in theirs.named_modules()
                   if isinstance(m, nn.BatchNorm2d)}  # fmt: skip
    our_modes = {k: m.training for k, m in ours.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert their_modes == {k.removesuffix("."): v for k, v in convert.to_torchvision(
        {k + ".": v for k, v in our_modes.items()}).items()}  # fmt: skip
    theirs.eval(), ours.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, outputs = theirs(images), ours(images)
    assert len(outputs) == len(expected)
    for output, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(output, reference, rtol=0, atol=1e-4)
    assert multiply_adds(ours) == multiply_adds(theirs)
