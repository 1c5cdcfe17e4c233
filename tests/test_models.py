"""Models against the Lua's models/*.lua: structure, goldens, equivalences, errors."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import models
from datasets import table
from models import convert
from models.preresnet import PreActBlock
from models.resnet import ZeroPadShortcut
from models.resnext import ResNeXtBranchesBlock


def build_meta(*args, **kwargs):
    with torch.device("meta"):
        return models.create(*args, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# Section 2.6, to the unit.
PARAMETER_GOLDENS = [
    (("resnet", 18, "imagenet"), {}, 11_689_512),
    (("resnet", 34, "imagenet"), {}, 21_797_672),
    (("resnet", 50, "imagenet"), {}, 25_557_032),
    (("resnet", 101, "imagenet"), {}, 44_549_160),
    (("resnet", 152, "imagenet"), {}, 60_192_808),
    (("preresnet", 200, "imagenet"), {}, 64_666_152),
    (("resnext", 50, "imagenet"), {"cardinality": 32, "baseWidth": 4}, 25_028_904),
    (
        ("resnext", 50, "imagenet"),
        {"cardinality": 32, "baseWidth": 4, "bottleneckType": "resnext_B"},
        25_028_904,
    ),
    (("resnext", 50, "imagenet"), {"cardinality": 2, "baseWidth": 40}, 25_425_000),
    (("resnext", 50, "imagenet"), {"cardinality": 4, "baseWidth": 24}, 25_292_968),
    (("resnext", 50, "imagenet"), {"cardinality": 8, "baseWidth": 14}, 25_603_016),
    (("resnext", 101, "imagenet"), {"cardinality": 32, "baseWidth": 4}, 44_177_704),
    (("resnext", 101, "imagenet"), {"cardinality": 64, "baseWidth": 4}, 83_455_272),
    (("resnet", 20, "cifar10"), {}, 269_722),
    (("resnet", 32, "cifar10"), {}, 464_154),
    (("resnet", 44, "cifar10"), {}, 658_586),
    (("resnet", 56, "cifar10"), {}, 853_018),
    (("resnet", 110, "cifar10"), {}, 1_727_962),
    (("resnet", 1202, "cifar10"), {}, 19_421_274),
    (("resnext", 29, "cifar10"), {"cardinality": 8, "baseWidth": 64}, 34_426_698),
    (("resnext", 29, "cifar100"), {"cardinality": 8, "baseWidth": 64}, 34_518_948),
    (("resnext", 29, "cifar10"), {"cardinality": 16, "baseWidth": 64}, 68_155_210),
    (("resnext", 29, "cifar100"), {"cardinality": 16, "baseWidth": 64}, 68_247_460),
]


@pytest.mark.parametrize(("args", "kwargs", "expected"), PARAMETER_GOLDENS)
def test_parameter_counts_match_the_lua(args, kwargs, expected):
    assert n_params(build_meta(*args, **kwargs)) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "gmacs"),
    [
        (("resnet", 18, "imagenet"), {}, 1.814),
        (("resnet", 50, "imagenet"), {}, 4.089),
        (("resnet", 101, "imagenet"), {}, 7.801),
        (("resnext", 50, "imagenet"), {"cardinality": 32, "baseWidth": 4}, 4.230),
        (("resnext", 101, "imagenet"), {"cardinality": 64, "baseWidth": 4}, 15.460),
    ],
)
def test_complexity_counts_multiply_adds(args, kwargs, gmacs):
    model = build_meta(*args, **kwargs)
    params, macs = models.complexity(model, 224)
    assert params == n_params(model)
    assert macs / 1e9 == pytest.approx(gmacs, abs=5e-4)


def test_complexity_grows_with_input_size():
    model = build_meta("resnet", 20, "cifar10")
    assert models.complexity(model, 64)[1] == pytest.approx(
        4 * models.complexity(model, 32)[1], rel=0.01
    )


SMALL_CONFIGS = (
    [("resnet", 20, "cifar10", {"shortcutType": s}) for s in "ABC"]
    + [("preresnet", 20, "cifar100", {"shortcutType": s}) for s in "ABC"]
    + [
        (
            "resnext",
            29,
            "cifar10",
            {"shortcutType": s, "cardinality": 2, "baseWidth": 4, "bottleneckType": b},
        )
        for s in "BC"
        for b in ("resnet", "resnext_B", "resnext_C")
    ]
    + [("resnet", 18, "imagenet", {"shortcutType": s}) for s in "ABC"]
    + [("resnet", 50, "imagenet", {"shortcutType": s}) for s in "BC"]
    + [
        ("preresnet", 18, "imagenet", {"shortcutType": "A"}),
        ("preresnet", 50, "imagenet", {"shortcutType": "C"}),
        ("resnext", 50, "imagenet", {"cardinality": 4, "baseWidth": 4}),
        (
            "resnext",
            50,
            "imagenet",
            {"cardinality": 2, "baseWidth": 4, "bottleneckType": "resnext_B"},
        ),
        ("resnet", 18, "flowers", {"nClasses": 7}),
    ]
)


@pytest.mark.parametrize(("net", "depth", "dataset", "kwargs"), SMALL_CONFIGS)
def test_forward_backward_on_small_inputs(net, depth, dataset, kwargs):
    torch.manual_seed(0)
    model = models.create(net, depth, dataset, **kwargs)
    size = 32 if table.is_small(dataset) else 64
    expected_classes = kwargs.get("nClasses") or models.DATASETS[dataset].classes
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, expected_classes)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_shortcut_a_subsamples_and_appends_zero_channels():
    shortcut = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0


def test_shortcut_types_place_projections_as_the_lua():
    a = models.create("resnet", 20, "cifar10")  # CIFAR default A
    assert isinstance(a.layer2[0].shortcut, ZeroPadShortcut)
    assert isinstance(a.layer2[1].shortcut, nn.Identity)
    b = models.create("resnet", 20, "cifar10", shortcutType="B")
    assert [type(m) for m in b.layer2[0].shortcut] == [nn.Conv2d, nn.BatchNorm2d]
    assert isinstance(b.layer1[0].shortcut, nn.Identity)
    c = models.create("resnet", 20, "cifar10", shortcutType="C")
    assert isinstance(c.layer1[0].shortcut, nn.Sequential)
    assert c.layer2[0].shortcut[0].stride == (2, 2)
    pre = models.create("preresnet", 20, "cifar10", shortcutType="B")
    assert [type(m) for m in pre.layer2[0].shortcut] == [nn.Conv2d]  # no BN in preresnet


def test_default_shortcuts_per_dataset_and_family():
    assert models.default_shortcut("resnet", "cifar10") == "A"
    assert models.default_shortcut("preresnet", "cifar100") == "A"
    assert models.default_shortcut("resnext", "cifar10") == "B"
    assert models.default_shortcut("resnet", "imagenet") == "B"
    assert models.default_shortcut("resnext", "imagenet") == "B"


def test_bottleneck_stride_sits_on_the_3x3_convolution():
    model = build_meta("resnext", 50, "imagenet", cardinality=32, baseWidth=4)
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2) and block.conv2.groups == 32
    assert block.conv2.in_channels == 256 and block.conv3.out_channels == 512
    assert [model.__getattr__(f"layer{i}")[0].conv2.out_channels for i in range(1, 5)] == [
        128,
        256,
        512,
        1024,
    ]


def test_resnext_cifar_stem_and_width():
    model = build_meta("resnext", 29, "cifar10", cardinality=16, baseWidth=64)
    assert model.stem.conv.out_channels == 64 and model.stem.conv.kernel_size == (3, 3)
    assert not hasattr(model.stem, "maxpool")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert model.layer1[0].conv2.out_channels == 1024 and model.layer3[0].conv3.out_channels == 1024
    assert isinstance(model.layer1[0].shortcut, nn.Sequential)  # 64 -> 256 needs a projection


def test_preresnet_preactivation_placements():
    imagenet = models.create("preresnet", 18, "imagenet")
    places = [[b.preact for b in getattr(imagenet, f"layer{i}")] for i in range(1, 5)]
    assert places == [["none", "residual"]] + [["both", "residual"]] * 3
    assert not hasattr(imagenet.layer1[0], "preact_bn")
    cifar = models.create("preresnet", 20, "cifar10")
    assert [getattr(cifar, f"layer{i}")[0].preact for i in (1, 2, 3)] == ["both"] * 3
    assert list(dict(cifar.stem.named_children())) == ["conv"]
    assert isinstance(cifar.final.bn, nn.BatchNorm2d)


def test_preactivation_both_feeds_the_activated_input_to_the_shortcut():
    torch.manual_seed(0)
    block = models.create("preresnet", 20, "cifar10", shortcutType="C").layer1[0]
    block.eval()
    x = torch.randn(1, 16, 8, 8)
    activated = torch.relu(block.preact_bn(x))
    assert isinstance(block, PreActBlock)
    torch.testing.assert_close(block(x), block.residual(activated) + block.shortcut(activated))
    normal = models.create("preresnet", 20, "cifar10", shortcutType="C").layer1[1].eval()
    torch.testing.assert_close(
        normal(x), normal.residual(torch.relu(normal.preact_bn(x))) + normal.shortcut(x)
    )


def test_initialisation_follows_the_lua():
    torch.manual_seed(0)
    model = models.create("resnet", 50, "imagenet")
    conv = model.layer3[0].conv2  # 256 -> 256, 3x3
    assert conv.bias is None
    assert conv.weight.std().item() == pytest.approx((2 / (3 * 3 * 256)) ** 0.5, rel=0.02)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert torch.all(model.fc.bias == 0)
    assert model.fc.weight.abs().max().item() <= 1 / 2048**0.5


def _randomise_bn_statistics(model):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


def _copy_b_into_c(model_b, model_c):
    """Concatenate form B's branch weights into form C's grouped layers."""
    state = {}
    for name, module in model_b.named_modules():
        if not isinstance(module, ResNeXtBranchesBlock):
            continue
        for layer in ("conv1", "bn1", "conv2", "bn2"):
            for key in getattr(module.branches[0], layer).state_dict():
                parts = [getattr(b, layer).state_dict()[key] for b in module.branches]
                state[f"{name}.{layer}.{key}"] = (
                    parts[0] if key == "num_batches_tracked" else torch.cat(parts)
                )
    for key, value in model_b.state_dict().items():
        if ".branches." not in key:
            state[key] = value
    model_c.load_state_dict(state, strict=True)


@pytest.mark.parametrize(("depth", "dataset", "size"), [(29, "cifar10", 32), (50, "imagenet", 64)])
def test_resnext_forms_b_and_c_compute_the_same_function(depth, dataset, size):
    torch.manual_seed(0)
    kwargs = {"cardinality": 4, "baseWidth": 4}
    model_b = models.create("resnext", depth, dataset, bottleneckType="resnext_B", **kwargs)
    model_c = models.create("resnext", depth, dataset, bottleneckType="resnext_C", **kwargs)
    _randomise_bn_statistics(model_b)
    _copy_b_into_c(model_b, model_c)
    x = torch.randn(2, 3, size, size)
    model_b.eval(), model_c.eval()
    with torch.no_grad():
        expected = model_b(x)
        # The randomised statistics make logits of up to ~1e6: fp32 rounding of the grouped
        # and the per-branch sums differs by about 1e-6 of that, whichever kernels run.
        scale = float(expected.abs().max())
        torch.testing.assert_close(model_c(x), expected, atol=1e-5 * scale, rtol=1e-4)


def test_resnext_c_with_one_group_of_64_is_the_resnet_bottleneck():
    torch.manual_seed(0)
    resnext_c = models.create("resnext", 50, "imagenet")
    resnet_b = models.create("resnet", 50, "imagenet")
    assert n_params(resnext_c) == n_params(resnet_b)
    resnet_b.load_state_dict(resnext_c.state_dict(), strict=True)


TORCHVISION_TWINS = [
    (torchvision.models.resnet18, ("resnet", 18, "imagenet"), {}),
    (torchvision.models.resnet34, ("resnet", 34, "imagenet"), {}),
    (torchvision.models.resnet50, ("resnet", 50, "imagenet"), {}),
    (torchvision.models.resnet101, ("resnet", 101, "imagenet"), {}),
    (torchvision.models.resnet152, ("resnet", 152, "imagenet"), {}),
    (
        torchvision.models.resnext50_32x4d,
        ("resnext", 50, "imagenet"),
        {"cardinality": 32, "baseWidth": 4},
    ),
]


@pytest.mark.parametrize(("tv_builder", "args", "kwargs"), TORCHVISION_TWINS)
def test_torchvision_weights_give_the_same_logits(tv_builder, args, kwargs):
    torch.manual_seed(0)
    reference = tv_builder()
    _randomise_bn_statistics(reference)
    ours = models.create(*args, **kwargs)
    ours.load_state_dict(convert.from_torchvision(reference.state_dict()), strict=True)
    reference.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        difference = (ours(x) - reference(x)).abs().max().item()
    assert difference < 1e-5
    back = tv_builder()
    back.load_state_dict(convert.to_torchvision(ours.state_dict()), strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


@pytest.mark.parametrize(
    ("args", "size"),
    [
        (("resnet", 18, "imagenet"), 256),
        (("resnet", 18, "imagenet"), 320),
        (("resnet", 20, "cifar10"), 28),
        (("resnet", 20, "cifar10"), 40),
    ],
)
def test_global_pooling_adapts_to_the_input_size(args, size):
    model = models.create(*args).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, models.DATASETS[args[2]].classes)


@pytest.mark.parametrize(
    ("args", "size", "kernel"),
    [(("resnet", 18, "imagenet"), 224, 7), (("preresnet", 20, "cifar10"), 32, 8)],
)
def test_outputs_at_the_lua_input_sizes_equal_fixed_pooling(args, size, kernel):
    torch.manual_seed(0)
    model = models.create(*args).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        trunk = model.stem(x)
        for name in model.stage_names:
            trunk = getattr(model, name)(trunk)
        fixed = model.fc(torch.flatten(F.avg_pool2d(model.final(trunk), kernel), 1))
        torch.testing.assert_close(model(x), fixed)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("resnext", 34, "imagenet"), {}, "50, 101, 152"),
        (("resnet", 21, "cifar10"), {}, "6n+2"),
        (("resnext", 30, "cifar10"), {}, "9n+2"),
        (("resnet", 6 * 10**9 + 2, "cifar10"), {}, "up to 10000"),
        (("resnet", 200, "imagenet"), {}, "18, 34, 50, 101, 152"),
        (("preresnet", 20, "imagenet"), {}, "18, 34, 50, 101, 152, 200"),
        (("resnet", 50, "imagenet"), {"shortcutType": "A"}, "use B or C"),
        (("resnext", 29, "cifar10"), {"shortcutType": "A"}, "use B or C"),
        (("resnet", 18, "imagenet"), {"shortcutType": "D"}, "valid: A, B, C"),
        (("resnext", 50, "imagenet"), {"cardinality": 0}, "cardinality must be at least 1"),
        (("resnext", 50, "imagenet"), {"baseWidth": 0}, "baseWidth >= 1"),
        (
            ("resnext", 50, "imagenet"),
            {"bottleneckType": "resnext_A"},
            "resnet, resnext_B, resnext_C",
        ),
        (("vgg", 16, "imagenet"), {}, "resnet, preresnet, resnext"),
        (("resnet", 18, "imagenet"), {"nClasses": 0}, "at least 1"),
        (("resnet", 18, "flowers"), {}, "give nClasses"),
    ],
)
def test_invalid_configurations_raise_value_error_listing_what_is_valid(args, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        build_meta(*args, **kwargs)


def test_describe_gives_the_lua_startup_lines():
    assert models.describe("resnet", 50, "imagenet") == [" | ResNet-50 ImageNet"]
    assert models.describe("resnet", 110, "cifar10") == [" | ResNet-110 CIFAR-10"]
    assert models.describe("resnext", 50, "imagenet", bottleneckType="resnext_C") == [
        "Deploying ResNeXt bottleneck block form C (group convolution)",
        " | ResNet-50 ImageNet",
    ]
    assert models.describe("resnext", 29, "cifar100", bottleneckType="resnext_B") == [
        "Deploying ResNeXt bottleneck block form B",
        " | ResNet-29 cifar100",
    ]


def test_replace_classifier_gives_a_fresh_zero_bias_linear():
    model = models.create("resnet", 18, "imagenet")
    models.replace_classifier(model, 80)
    assert model.fc.out_features == 80 and model.fc.in_features == 512
    assert torch.all(model.fc.bias == 0) and model.fc.weight.abs().sum() > 0


def test_every_registered_network_builds_at_its_default_depth_where_it_is_defined():
    for name, kind in models.NETWORKS.items():
        datasets = ("imagenet",) * kind.folder_images + ("cifar10",) * kind.small_images
        for dataset in datasets:
            with torch.device("meta"):
                network = models.create(name, models.default_depth(name, dataset), dataset)
            assert network.fc.out_features == models.DATASETS[dataset].classes
        if not kind.small_images:
            with pytest.raises(ValueError, match="not the 32 x 32 datasets"):
                models.create(name, models.default_depth(name, "cifar10"), "cifar10")
