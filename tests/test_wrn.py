"""-netType wrn: the Wide Residual Networks of Zagoruyko and Komodakis (BMVC 2016), counted
against the paper's parameter table, built as their Lua code builds a block, and trained."""

import json
import os

import pytest
import runs
import torch
import torchvision

import models
from models import wrn

# The WRN paper's parameter counts (Tables 2 and 4, CIFAR-10), in millions.
PUBLISHED = [(40, 1, 0.6), (40, 2, 2.2), (40, 4, 8.9), (40, 8, 35.7), (28, 10, 36.5),
             (28, 12, 52.5), (22, 8, 17.2), (22, 10, 26.8), (16, 8, 11.0), (16, 10, 17.1)]  # fmt: skip


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("depth", "k", "millions"), PUBLISHED)
def test_parameter_counts_are_the_papers(depth, k, millions):
    with torch.device("meta"):
        network = models.create("wrn", depth, "cifar10", widenFactor=k)
    assert round(parameters(network) / 1e6, 1) == millions


def test_wrn_28_10_counts_the_same_on_every_small_dataset_but_its_classifier():
    with torch.device("meta"):
        counts = {d: parameters(models.create("wrn", 28, d, widenFactor=10))
                  for d in ("cifar10", "cifar100", "fashionmnist")}  # fmt: skip
    assert counts["cifar10"] == counts["fashionmnist"] == 36_479_194
    assert counts["cifar100"] - counts["cifar10"] == 90 * (640 + 1)  # 90 more outputs, each
    # with 640 weights and a bias


def test_blocks_activate_and_project_where_the_width_or_the_stride_changes():
    network = models.create("wrn", 16, "cifar10", widenFactor=1)
    first, second = network.layer1[0], network.layer1[1]
    assert first.preact == "residual" and isinstance(first.shortcut, torch.nn.Identity)  # 16->16
    stage2 = network.layer2[0]
    assert stage2.preact == "both" and stage2.shortcut[0].kernel_size == (1, 1)
    assert stage2.shortcut[0].stride == (2, 2) and stage2.shortcut[0].bias is None
    assert second.preact == "residual"
    assert [m.out_channels for m in (network.layer1[0], network.layer2[0], network.layer3[0])] == [
        16,
        32,
        64,
    ]


def test_dropout_sits_between_the_two_convolutions():
    network = models.create("wrn", 10, "cifar10", widenFactor=2, dropout=0.5).train()
    block = network.layer2[0]
    seen = {}
    block.dropout.register_forward_hook(lambda m, args, out: seen.update(input=args[0], out=out))
    x = torch.randn(4, 32, 8, 8)
    block(x)
    activated = torch.relu(block.preact_bn(x))
    expected = torch.relu(block.bn1(block.conv1(activated)))
    assert torch.allclose(seen["input"], expected, atol=1e-6)
    kept = seen["out"] != 0  # of the activations the ReLU left, dropout keeps half, doubled
    assert 0.4 < kept.sum() / (expected != 0).sum() < 0.6
    assert torch.allclose(seen["out"][kept], 2 * expected[kept])
    assert isinstance(models.create("wrn", 10, "cifar10").layer1[0].dropout, torch.nn.Identity)


def test_imagenet_wrn_50_2_is_resnext_with_one_group_of_twice_the_width():
    with torch.device("meta"):
        ours = models.create("resnext", 50, "imagenet", cardinality=1, baseWidth=128)
        theirs = torchvision.models.wide_resnet50_2()
    assert parameters(ours) == parameters(theirs) == 68_883_240
    with pytest.raises(ValueError, match="-cardinality 1 -baseWidth 128"):
        models.create("wrn", 28, "imagenet")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"netType": "wrn", "depth": 20}, "6n\\+4"),
        ({"netType": "wrn", "depth": 28, "widenFactor": 0}, "widenFactor must be at least 1"),
        ({"netType": "wrn", "depth": 28, "dropout": 1.0}, "dropout must be in"),
        ({"netType": "resnet", "depth": 20, "widenFactor": 2}, "for netType wrn"),
        ({"netType": "preresnet", "depth": 20, "dropout": 0.3}, "for netType wrn"),
    ],
)
def test_bad_wide_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        models.create(dataset="cifar10", **arguments)


def test_recorded_dropout_is_a_number_and_text_is_refused():
    arch = {"netType": "wrn", "depth": 16, "dataset": "cifar10", "widenFactor": 2, "dropout": 0.3}
    assert models.complete_arch(arch, "m.pth")["dropout"] == 0.3
    with pytest.raises(models.UsageError, match="dropout '0.3', which is not a number"):
        models.complete_arch({**arch, "dropout": "0.3"}, "m.pth")
    assert models.arch_flags(models.full_arch(arch)) == (
        "-netType wrn -depth 16 -widenFactor 2 -dropout 0.3"
    )


def test_a_wide_resnet_trains_resumes_and_tests_on_real_fashion_mnist(fashion_root, tmp_path):
    save = tmp_path / "run"
    flags = ["-dataset", "fashionmnist", "-data", fashion_root, "-netType", "wrn", "-depth", "10",
             "-widenFactor", "2", "-dropout", "0.3", "-batchSize", "4", "-save", save,
             "-gen", tmp_path / "gen"]  # fmt: skip
    first = runs.main_run([*flags, "-nEpochs", "1"])
    assert first.returncode == 0, first.stderr
    assert " | WRN-10-2 Fashion-MNIST" in first.stdout
    resumed = runs.main_run([*flags, "-nEpochs", "2", "-resume", save])
    assert resumed.returncode == 0, resumed.stderr
    with open(os.path.join(save, "opts.json")) as handle:
        recorded = json.load(handle)
    assert recorded["widenFactor"] == 2 and recorded["dropout"] == 0.3
    tested = runs.main_run([*flags, "-testOnly", "true", "-retrain", save / "model_best.pth"])
    assert tested.returncode == 0, tested.stderr
    assert wrn.WIDTHS == (16, 32, 64)
