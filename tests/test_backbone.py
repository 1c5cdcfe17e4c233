"""ResNeXt as a detection backbone with mmdetection's options, and the fine-tuning flags
(-frozenStages, -normEval, -zeroInitResidual) on the command line."""

import pytest
import torch
import torchvision
from test_cli import run_main, small_cifar_args
from torch import nn

import checkpoints
import models
from models import convert


def test_resnext_50_backbone_gives_c2_to_c5_without_the_classifier():
    backbone = models.backbone("resnext", 50, cardinality=32, baseWidth=4)
    assert sum(p.numel() for p in backbone.parameters()) == 22_979_904
    with torch.no_grad():
        outputs = backbone.eval()(torch.randn(1, 3, 224, 224))
    assert [tuple(o.shape[1:]) for o in outputs] == [(256, 56, 56), (512, 28, 28),
                                                     (1024, 14, 14), (2048, 7, 7)]  # fmt: skip


def test_the_backbone_computes_torchvisions_network_without_its_head():
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d().eval()
    backbone = models.backbone("resnext", 50, cardinality=32, baseWidth=4, outIndices=(3,))
    state = convert.from_torchvision(reference.state_dict())
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (c5,) = backbone.eval()(images)
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))))))  # fmt: skip
    torch.testing.assert_close(c5, expected, rtol=0, atol=1e-5)
    full = models.complexity(models.create("resnext", 50, "imagenet", cardinality=32,
                                           baseWidth=4), 224)[1]  # fmt: skip
    assert models.complexity(WithHead(backbone), 224)[1] == full - 2048 * 1000


class WithHead(nn.Module):
    """A backbone as complexity() counts networks: its last output, summed."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)[-1].sum((2, 3))


def test_style_strides_and_dilations_go_where_mmdetection_puts_them():
    caffe = models.backbone("resnet", 50, style="caffe", strides=(1, 2, 2, 1),
                            dilations=(1, 1, 1, 2))  # fmt: skip
    first = caffe.layer2[0]
    assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))
    assert caffe.layer4[1].conv2.dilation == caffe.layer4[1].conv2.padding == (2, 2)
    assert caffe.layer4[0].shortcut[0].stride == (1, 1)
    with torch.no_grad():
        outputs = caffe.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outputs] == [16, 8, 4, 4]  # C5 keeps C4's resolution
    pytorch = models.backbone("resnet", 18)
    assert pytorch.layer2[0].conv1.stride == (2, 2)  # basic blocks: the first 3x3


def test_frozen_stages_and_norm_eval_hold_through_train():
    backbone = models.backbone("resnet", 50, frozenStages=1, normEval=True)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    stem_and_layer1 = sum(p.numel() for m in (backbone.stem, backbone.layer1)
                          for p in m.parameters())  # fmt: skip
    assert trainable == 25_557_032 - 2_049_000 - stem_and_layer1
    backbone.train()
    assert not backbone.stem.training and not backbone.layer1.training
    assert backbone.layer2.training and not backbone.layer2[0].bn1.training  # normEval
    unfrozen = models.backbone("resnet", 50, frozenStages=1)
    assert unfrozen.train().layer2[0].bn1.training


def test_zero_init_residual_starts_each_block_as_its_shortcut():
    backbone = models.backbone("resnet", 18, zeroInitResidual=True)
    assert all(not block.bn2.weight.any() for stage in (backbone.layer1, backbone.layer4)
               for block in stage)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"style": "tf"}, "unknown style 'tf'; valid: pytorch, caffe"),
        ({"strides": (1, 2, 2)}, "strides must be 4 integers of at least 1"),
        ({"dilations": (1, 1, 0, 1)}, "dilations must be 4 integers of at least 1"),
        ({"outIndices": (4,)}, "outIndices must be some of 0, 1, 2, 3"),
        ({"frozenStages": 5}, "frozenStages must be -1 .none. to 4"),
    ],
)
def test_invalid_backbone_options_say_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.backbone("resnext", 50, **kwargs)


def test_a_frozen_fine_tuning_run_leaves_the_frozen_weights_bitwise_unchanged(cifar10_root,
                                                                               tmp_path):  # fmt: skip
    torch.manual_seed(3)
    source = models.create("resnet", 8, "cifar10")
    record = checkpoints.model_record(source, 0, models.complete_arch(
        {"netType": "resnet", "depth": 8, "dataset": "cifar10"}, "a test"), [])  # fmt: skip
    torch.save(record, tmp_path / "source.pth")
    save = tmp_path / "run"
    flags = f"-retrain {tmp_path / 'source.pth'} -frozenStages 2 -normEval true"
    first = run_main(*small_cifar_args(cifar10_root, save, f"-nEpochs 1 {flags}"))
    assert first.returncode == 0, first.stderr
    resumed = run_main(*small_cifar_args(cifar10_root, save, f"-nEpochs 2 {flags} -resume {save}"))
    assert resumed.returncode == 0, resumed.stderr
    trained = torch.load(save / "model_2.pth", weights_only=True)["model"]
    before = record["model"]
    for key, value in before.items():
        if key.startswith(("stem.", "layer1.", "layer2.")) or "running" in key:  # normEval
            assert torch.equal(trained[key], value), key
    for key in ("layer3.0.conv1.weight", "layer3.0.bn1.weight", "fc.weight"):
        assert not torch.equal(trained[key], before[key]), key
    refused = run_main(*small_cifar_args(cifar10_root, save, f"-nEpochs 3 -resume {save}"))
    assert refused.returncode == 2
    assert "was trained with -frozenStages 2 -normEval true; resume with the same" in (
        refused.stderr
    )


@pytest.mark.parametrize(("net", "depth"), [("resnest", 14), ("resnet", 18)])
def test_the_default_backbone_computes_the_networks_own_stages(net, depth):
    torch.manual_seed(0)
    network = models.create(net, depth, "imagenet").eval()
    backbone = models.backbone(net, depth).eval()
    weights = {k: v for k, v in network.state_dict().items() if not k.startswith("fc.")}
    backbone.load_state_dict(weights, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = network.layer4(network.layer3(network.layer2(network.layer1(
            network.stem(images)))))  # fmt: skip
        assert torch.equal(backbone(images)[-1], expected)
    n_params = sum(p.numel() for p in backbone.parameters())
    assert (
        n_params == sum(p.numel() for p in network.parameters()) - network.fc.weight.numel() - 1000
    )


def test_resnest_and_senet_backbones_take_mmdetections_options():
    resnest = models.backbone("resnest", 50, style="caffe", strides=(1, 2, 2, 1),
                              dilations=(1, 1, 1, 2), frozenStages=2)  # fmt: skip
    first = resnest.layer2[0]
    assert first.conv1.stride == (2, 2) and isinstance(first.avd, nn.Identity)  # caffe
    assert resnest.layer4[0].conv2.conv.dilation == (2, 2)
    with torch.no_grad():
        shapes = [o.shape[-1] for o in resnest.eval()(torch.randn(1, 3, 64, 64))]
    assert shapes == [16, 8, 4, 4]
    assert not any(p.requires_grad for p in resnest.layer2.parameters())
    assert all(p.requires_grad for p in resnest.layer3.parameters())
    pytorch = models.backbone("resnest", 50)
    assert pytorch.layer2[0].avd.stride == 2 and pytorch.layer2[0].conv1.stride == (1, 1)
    with torch.device("meta"):
        senet = models.backbone("senet", 154, outIndices=(1, 3))
    assert senet.out_indices == (1, 3) and senet.layer2[0].shortcut[0].kernel_size == (3, 3)
