"""ResNeSt (-netType resnest): the networks the ResNeSt authors' `resnest` package and timm
(resnest*d / resnest*e) build, to the parameter, the key, the multiply-add and the logit;
both are the oracles (pretrained=False)."""

import os
import sys

import pytest
import timm
import torch
from conftest import ROOT
from ranks import run_ranks
from resnest.torch import resnest50, resnest101, resnest200, resnest269
from test_cli import run_main
from test_squeeze_excitation import assert_timm_twins, parameters, randomise_batch_norm
from timm.models.resnest import ResNestBottleneck
from timm.models.resnet import ResNet as TimmResNet
from torch import nn

import models
from checkpoints import CheckpointError
from models import convert, loading
from runtime import sync_batchnorm

TWINS = [  # (timm name, depth, published parameter count)
    ("resnest14d", 14, 10_611_688),
    ("resnest26d", 26, 17_069_448),
    ("resnest50d", 50, 27_483_240),
    ("resnest101e", 101, 48_275_016),
    ("resnest200e", 200, 70_201_544),
    ("resnest269e", 269, 110_929_480),
]


@pytest.mark.parametrize(("name", "depth", "published"), TWINS)
def test_parameters_and_names_equal_timms(name, depth, published):
    with torch.device("meta"):
        ours = models.create("resnest", depth, "imagenet")
        reference = timm.create_model(name, pretrained=False)
    assert parameters(ours) == parameters(reference) == published
    assert set(convert.to_timm(ours.state_dict())) == set(reference.state_dict())


AUTHORS = [(resnest50, 50), (resnest101, 101), (resnest200, 200), (resnest269, 269)]


@pytest.mark.parametrize(("builder", "depth"), AUTHORS)
def test_parameters_and_names_equal_the_resnest_packages(builder, depth):
    with torch.device("meta"):
        ours = models.create("resnest", depth, "imagenet")
        reference = builder(pretrained=False)
    assert parameters(ours) == parameters(reference)
    assert set(convert.to_timm(ours.state_dict())) == set(reference.state_dict())


def test_the_resnest_packages_weights_give_its_logits():
    torch.manual_seed(0)
    reference = resnest50(pretrained=False).eval()
    randomise_batch_norm(reference)
    assert_timm_twins(models.create("resnest", 50, "imagenet").eval(), reference)


def test_resnest_50_multiply_adds():
    params, macs = models.complexity(models.create("resnest", 50, "imagenet"), 224)
    assert (params, round(macs / 1e9, 3)) == (27_483_240, 5.371)


def timm_resnest(radix: int, cardinality: int, base_width: int) -> TimmResNet:
    """timm's ResNeSt-14 with another radix, cardinality and width (its resnest14d's)."""
    return TimmResNet(block=ResNestBottleneck, layers=[1, 1, 1, 1], stem_type="deep",
                      stem_width=32, avg_down=True, base_width=base_width,
                      cardinality=cardinality,
                      block_args={"radix": radix, "avd": True, "avd_first": False})  # fmt: skip


@pytest.mark.parametrize(("radix", "cardinality", "base_width"), [(2, 1, 64), (1, 1, 64),
                                                                 (4, 2, 40)])  # fmt: skip
def test_timm_weights_give_timms_logits_and_go_back_unchanged(radix, cardinality, base_width):
    torch.manual_seed(0)
    reference = timm_resnest(radix, cardinality, base_width).eval()
    randomise_batch_norm(reference)
    ours = models.create("resnest", 14, "imagenet", radix=radix, cardinality=cardinality,
                         baseWidth=base_width).eval()  # fmt: skip
    assert_timm_twins(ours, reference)
    arch = convert.arch_of_torchvision(reference.state_dict())
    assert (arch["radix"], arch["cardinality"], arch["baseWidth"]) == (radix, cardinality,
                                                                      base_width)  # fmt: skip


def test_a_timm_file_is_recognised_and_its_flags_named():
    reference = timm.create_model("resnest26d", pretrained=False)
    with pytest.raises(CheckpointError, match=r"it fits -netType resnest -depth 26$"):
        loading.load_weights(models.create("resnest", 50, "imagenet"), reference.state_dict(), "f")
    loading.load_weights(models.create("resnest", 26, "imagenet"), reference.state_dict(), "f")


def test_one_image_trains_without_error_and_leaves_the_attention_statistics():
    model = models.create("resnest", 14, "imagenet", nClasses=3).train()
    attention_norm = model.layer1[0].conv2.bn1
    before = attention_norm.running_mean.clone()
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert torch.equal(attention_norm.running_mean, before)
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(attention_norm.running_mean, before)


def test_the_avd_pool_and_average_down_shortcut_sit_where_the_paper_puts_them():
    model = models.create("resnest", 50, "imagenet")
    first, later = model.layer2[0], model.layer2[1]
    assert first.conv2.conv.stride == (1, 1) and first.avd.stride == 2
    assert isinstance(later.avd, torch.nn.Identity)
    pool, conv, _ = first.shortcut
    assert (pool.kernel_size, pool.ceil_mode, pool.count_include_pad) == (2, True, False)
    assert conv.stride == (1, 1)
    assert isinstance(model.layer1[0].shortcut[0], torch.nn.Identity)  # no pool in stage 1
    assert [model.stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    deeper = models.create("resnest", 101, "imagenet")
    assert [deeper.stem[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]


def test_invalid_resnest_settings_say_what_is_valid():
    with pytest.raises(ValueError, match="resnest ImageNet depth must be one of 14, 26, 50"):
        models.create("resnest", 34, "imagenet")
    with pytest.raises(ValueError, match="not the 32 x 32 datasets"):
        models.create("resnest", 50, "cifar10")
    with pytest.raises(ValueError, match="radix must be at least 1"):
        models.create("resnest", 50, "imagenet", radix=0)
    with pytest.raises(ValueError, match="se .squeeze-and-excitation. is for netType resnet"):
        models.create("resnest", 50, "imagenet", se=16)


def test_a_resnest_trains_on_a_jpeg_folder_and_resumes(jpeg_root, tmp_path):
    save = tmp_path / "run"
    flags = ["-dataset", "imagenet", "-data", jpeg_root, "-netType", "resnest", "-depth", "14",
             "-batchSize", "7", "-nThreads", "0", "-cropSize", "64", "-save", str(save),
             "-gen", str(tmp_path / "gen")]  # fmt: skip
    first = run_main(*flags, "-nEpochs", "1")  # 15 images: a last batch of one
    assert first.returncode == 0, first.stderr
    assert " | ResNeSt-14 ImageNet" in first.stdout
    resumed = run_main(*flags, "-nEpochs", "2", "-resume", str(save))
    assert resumed.returncode == 0, resumed.stderr
    saved = torch.load(save / "model_2.pth", weights_only=True)
    assert (saved["arch"]["netType"], saved["arch"]["radix"]) == ("resnest", 2)
    # The model file says how its val images were prepared; the scripts prepare them so.
    assert saved["evaluation"] == {"resize": 73, "crop": 64, "interpolation": "bicubic"}
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import inference

    _, view, _ = inference.load_model(str(save / "model_2.pth"), torch.device("cpu"))
    image = next(iter(inference.images_below(jpeg_root)))
    assert inference.preprocess(image, view).shape == (3, 64, 64)


NEW_NETWORKS = [("resnest", 14, {}), ("resnest", 14, {"radix": 1, "cardinality": 2}),
                ("resnet", 18, {"se": 16})]  # fmt: skip


@pytest.mark.parametrize(("net", "depth", "kwargs"), NEW_NETWORKS)
@pytest.mark.parametrize("mode", ["optnet", "bf16", "channels_last"])
def test_the_new_networks_train_in_every_mode(net, depth, kwargs, mode):
    """-optnet (recomputed blocks), -precision bf16 (autocast) and channels_last give the
    plain run's loss and finite gradients."""
    torch.manual_seed(0)
    model = models.create(net, depth, "imagenet", nClasses=5, **kwargs)
    images, target = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    plain = nn.functional.cross_entropy(model(images), target).item()
    if mode == "optnet":
        models.set_activation_checkpointing(model)
    if mode == "channels_last":
        model, images = (
            model.to(memory_format=torch.channels_last),
            images.to(memory_format=torch.channels_last),
        )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
        loss = nn.functional.cross_entropy(model(images).float(), target)
    loss.backward()
    assert loss.item() == pytest.approx(plain, rel=0.05 if mode == "bf16" else 1e-4)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def train_resnest_with_global_batch_norm(processes, images_per_rank):
    """One DistributedDataParallel step of a -syncBN ResNeSt-14 on each rank's images."""
    torch.manual_seed(0)
    model = sync_batchnorm.convert(models.create("resnest", 14, "imagenet", nClasses=3))
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(1 + processes.rank)
    images = torch.randn(images_per_rank[processes.rank], 3, 64, 64)
    nn.functional.cross_entropy(ddp(images), torch.zeros(len(images), dtype=torch.long)).backward()
    return model.layer1[0].conv2.bn1.running_mean.clone(), model.fc.weight.grad.clone()


def test_resnest_with_sync_bn_under_ddp_agrees_across_processes(tmp_path):
    """Also when one process holds a single image: its attention statistics are global."""
    results = run_ranks(train_resnest_with_global_batch_norm, 2, tmp_path, (1, 3))
    (mean0, grad0), (mean1, grad1) = results
    assert torch.equal(mean0, mean1) and torch.equal(grad0, grad1)
