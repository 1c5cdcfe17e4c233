"""Squeeze-and-excitation ResNet / ResNeXt (-se R): the networks timm builds as seresnet* /
seresnext*, to the parameter, the key and the logit; timm is the oracle (pretrained=False)."""

import pytest
import timm
import torch
from test_cli import run_main
from torch import nn

import checkpoints
import models
from checkpoints import CheckpointError
from models import convert, loading, setup
from run import plan

SE_TWINS = [  # (timm name, our create() arguments, published parameter count)
    ("seresnet18", {"netType": "resnet", "depth": 18}, 11_779_624),
    ("seresnet34", {"netType": "resnet", "depth": 34}, 21_960_416),
    ("seresnet50", {"netType": "resnet", "depth": 50}, 28_088_024),
    ("seresnet152", {"netType": "resnet", "depth": 152}, 66_821_848),
    ("seresnext50_32x4d", {"netType": "resnext", "depth": 50, "cardinality": 32, "baseWidth": 4},
     27_559_896),
    ("seresnext101_32x8d", {"netType": "resnext", "depth": 101, "cardinality": 32,
                            "baseWidth": 8}, 93_569_048),
]  # fmt: skip


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "arch", "published"), SE_TWINS)
def test_parameters_and_names_equal_timms(name, arch, published):
    with torch.device("meta"):
        ours = models.create(dataset="imagenet", se=16, **arch)
        reference = timm.create_model(name, pretrained=False)
    assert parameters(ours) == parameters(reference) == published
    assert set(convert.to_timm(ours.state_dict())) == set(reference.state_dict())


def randomise_batch_norm(model: nn.Module) -> None:
    """Running statistics away from 0 / 1, so that eval-mode logits depend on them."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def assert_timm_twins(ours: nn.Module, reference: nn.Module) -> None:
    """timm's weights, renamed, load strictly into ours and give timm's logits (in eval
    mode, with its BatchNorm statistics); ours, renamed back, are timm's unchanged."""
    ours.load_state_dict(convert.from_timm(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(images) - reference(images)).abs().max().item() < 1e-5
    back = convert.to_timm(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize(("name", "arch", "_"), [SE_TWINS[0], SE_TWINS[4]])
def test_timm_weights_give_timms_logits_and_go_back_unchanged(name, arch, _):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomise_batch_norm(reference)
    ours = models.create(dataset="imagenet", se=16, **arch).eval()
    assert_timm_twins(ours, reference)


def test_the_se_module_scales_channels_after_the_last_batch_norm():
    block = models.resnet.Bottleneck(256, 64, 1, "B", se=16)
    assert (block.se.fc1.in_channels, block.se.fc1.out_channels) == (256, 16)
    assert models.resnet.squeezed_width(64, 16) == 8  # at least 8, as timm rounds
    assert models.resnet.squeezed_width(1000, 16) == 64  # 62.5 to the nearest multiple of 8
    torch.manual_seed(0)
    block.eval()
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        branch = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(
            block.relu(block.bn1(block.conv1(x))))))))  # fmt: skip
        gate = torch.sigmoid(block.se.fc2(torch.relu(block.se.fc1(branch.mean((2, 3), True)))))
        assert torch.allclose(block(x), torch.relu(branch * gate + x), atol=1e-6)


def test_a_timm_file_is_recognised_and_its_flags_named():
    reference = timm.create_model("seresnet18", pretrained=False)
    arch = convert.arch_of_torchvision(reference.state_dict())
    assert models.arch_flags(arch) == "-netType resnet -depth 18 -se 16"
    plain = models.create("resnet", 18, "imagenet")
    with pytest.raises(CheckpointError, match=r"it fits -netType resnet -depth 18 -se 16$"):
        loading.load_weights(plain, reference.state_dict(), "seresnet18.pth")
    with_se = models.create("resnet", 18, "imagenet", se=16)
    loading.load_weights(with_se, reference.state_dict(), "seresnet18.pth")


def test_a_checkpoint_saved_before_se_existed_resumes(tmp_path):
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    opts = plan.parse(["-dataset", "cifar10", "-netType", "resnet", "-depth", "8",
                          "-data", str(tmp_path)])  # fmt: skip
    arch = plan.network(opts)
    old_arch = {k: v for k, v in arch.items() if k != "se"}
    state = models.create(**arch).state_dict()
    saved_model = checkpoints.ModelFile(state, "model_1.pth", old_arch)
    checkpoint = checkpoints.Checkpoint(1, 0, 0, saved_model, {}, (50.0, 10.0),
                                        checkpoints.RunState())  # fmt: skip
    model, saved = setup.build_model(
        plan.model_spec(opts, 224, "contiguous"), [str(i) for i in range(10)], checkpoint, None
    )
    assert saved["se"] == 0 and model.layer1[0].se is None


def test_se_is_refused_where_it_is_not_defined():
    with pytest.raises(ValueError, match="se .squeeze-and-excitation. is for netType resnet"):
        models.create("preresnet", 20, "cifar10", se=16)
    with pytest.raises(ValueError, match="must be 0 .none. or more"):
        models.create("resnet", 20, "cifar10", se=-1)
    assert models.describe("resnext", 50, "imagenet", se=16)[-1] == " | SE-ResNet-50 ImageNet"


def test_an_se_resnext_trains_on_a_jpeg_folder_and_resumes(jpeg_root, tmp_path):
    save = tmp_path / "run"
    flags = ["-dataset", "imagenet", "-data", jpeg_root, "-netType", "resnext", "-depth", "50",
             "-cardinality", "2", "-baseWidth", "4", "-se", "16", "-batchSize", "8",
             "-nThreads", "0", "-cropSize", "64", "-save", str(save), "-gen", str(tmp_path / "gen")]  # fmt: skip
    first = run_main(*flags, "-nEpochs", "1")
    assert first.returncode == 0, first.stderr
    assert " | SE-ResNet-50 ImageNet" in first.stdout
    resumed = run_main(*flags, "-nEpochs", "2", "-resume", str(save))
    assert resumed.returncode == 0, resumed.stderr
    assert "=> Training epoch # 2" in resumed.stdout
    saved = torch.load(save / "model_2.pth", weights_only=True)
    assert saved["arch"]["se"] == 16 and "layer4.2.se.fc2.bias" in saved["model"]


def test_senet_154_is_timms_to_the_parameter_and_the_logit():
    torch.manual_seed(0)
    reference = timm.create_model("senet154", pretrained=False).eval()
    assert parameters(reference) == 115_088_984
    randomise_batch_norm(reference)
    ours = models.create("senet", 154, "imagenet").eval()
    assert parameters(ours) == 115_088_984
    assert_timm_twins(ours, reference)
    assert models.arch_flags(convert.arch_of_torchvision(reference.state_dict())) == (
        "-netType senet -depth 154"
    )
    first = ours.layer2[0]
    assert (first.conv1.out_channels, first.conv2.out_channels) == (256, 512)  # halved 1x1
    assert first.shortcut[0].kernel_size == (3, 3) and first.shortcut[0].stride == (2, 2)
    assert ours.dropout.p == 0.2 and models.describe("senet", 154, "imagenet") == [
        " | SENet-154 ImageNet"
    ]


def test_senet_is_one_network():
    with pytest.raises(ValueError, match="netType senet is SENet-154"):
        models.create("senet", 154, "imagenet", cardinality=32, baseWidth=4)
    with pytest.raises(ValueError, match="senet ImageNet depth must be one of 154"):
        models.create("senet", 50, "imagenet")
