"""scripts/convert_t7.py on Torch7 streams built in fb.resnet.torch's nn.Sequential layout
(the Lua's construction order) by tests/torch7.py: same logits after conversion, old-nn quirks
read, networks of another layout refused with the mismatch named."""

import os

import pytest
import runs
import torch
from torch import nn
from torch7 import LuaObject, save

import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(ROOT, "scripts", "convert_t7.py")


def lua_conv(conv: nn.Conv2d, old_nn: bool) -> LuaObject:
    weight = conv.weight.reshape(conv.out_channels, -1) if old_nn else conv.weight
    return LuaObject("cudnn.SpatialConvolution", weight=weight, bias=torch.zeros(conv.out_channels),
                     nInputPlane=conv.in_channels, nOutputPlane=conv.out_channels,
                     kW=conv.kernel_size[1], kH=conv.kernel_size[0], dW=conv.stride[1],
                     dH=conv.stride[0], groups=conv.groups)  # fmt: skip


def lua_bn(bn: nn.BatchNorm2d, old_nn: bool) -> LuaObject:
    statistics = ({"running_std": 1 / torch.sqrt(bn.running_var + bn.eps)} if old_nn
                  else {"running_var": bn.running_var})  # fmt: skip
    return LuaObject("cudnn.SpatialBatchNormalization", weight=bn.weight, bias=bn.bias,
                     running_mean=bn.running_mean, eps=bn.eps, momentum=0.1, affine=True,
                     **statistics)  # fmt: skip


def sequential(modules) -> LuaObject:
    return LuaObject("nn.Sequential", modules=list(modules))


def lua_layers(module: nn.Module, old_nn: bool, skip=()) -> list:
    """Conv / BN (+ ReLU) Lua modules of module's layers in order, leaving out names in skip."""
    out = []
    for name, child in module.named_modules():
        if name in skip:
            continue
        if isinstance(child, nn.Conv2d):
            out.append(lua_conv(child, old_nn))
        elif isinstance(child, nn.BatchNorm2d):
            out += [lua_bn(child, old_nn), LuaObject("cudnn.ReLU", inplace=True)]
    return out


def lua_block(block: nn.Module, old_nn: bool, drop_shortcut_bn: bool) -> LuaObject:
    """Sequential{ConcatTable{Sequential(residual), shortcut}, CAddTable, ReLU}."""
    shortcut = getattr(block, "shortcut", None)
    shortcut_layers = lua_layers(shortcut, old_nn) if isinstance(shortcut, nn.Module) else []
    if drop_shortcut_bn:  # the released ResNet-18/34/50: no BN after the projection
        shortcut_layers = [m for m in shortcut_layers if "BatchNorm" not in m.name]
    residual = lua_layers(block, old_nn, skip={n for n, _ in block.named_modules()
                                               if n.startswith("shortcut")})  # fmt: skip
    branches = [sequential(residual), sequential(shortcut_layers) if shortcut_layers
                else LuaObject("nn.Identity")]  # fmt: skip
    return sequential([LuaObject("nn.ConcatTable", modules=branches), LuaObject("nn.CAddTable"),
                       LuaObject("cudnn.ReLU", inplace=True)])  # fmt: skip


def lua_network(model: nn.Module, old_nn=False, drop_shortcut_bn=False) -> LuaObject:
    """The whole network as fb.resnet.torch's models/*.lua built it."""
    modules = []
    for name, child in model.named_children():
        if name.startswith("layer"):
            modules.append(sequential(lua_block(b, old_nn, drop_shortcut_bn) for b in child))
        elif name == "fc":
            modules += [LuaObject("nn.View", size=child.in_features),
                        LuaObject("nn.Linear", weight=child.weight, bias=child.bias)]  # fmt: skip
        else:
            modules += lua_layers(child, old_nn)
    return sequential(modules)


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and weights, as a trained network has."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def convert(source, output, *flags):
    return runs.script_run(CONVERT, [source, output, *flags])


@pytest.mark.parametrize(
    ("arch", "flags", "old_nn"),
    [
        ({"netType": "resnet", "depth": 18, "dataset": "imagenet"}, ["-depth", "18"], False),
        ({"netType": "resnet", "depth": 20, "dataset": "cifar10"},
         ["-depth", "20", "-dataset", "cifar10"], True),
        ({"netType": "resnext", "depth": 29, "dataset": "cifar10", "cardinality": 2, "baseWidth": 16},
         ["-netType", "resnext", "-depth", "29", "-dataset", "cifar10", "-cardinality", "2",
          "-baseWidth", "16"], False),
        ({"netType": "preresnet", "depth": 20, "dataset": "cifar10"},
         ["-netType", "preresnet", "-depth", "20", "-dataset", "cifar10"], False),
    ],
)  # fmt: skip
def test_a_converted_t7_gives_the_same_logits(tmp_path, arch, flags, old_nn):
    model = trained_like(models.create(**arch))
    save(tmp_path / "model.t7", lua_network(model, old_nn))
    (tmp_path / "classes.txt").write_text(
        "\n".join(f"class{i}" for i in range(model.fc.out_features))
    )
    done = convert(
        tmp_path / "model.t7",
        tmp_path / "model.pth",
        *flags,
        "-classes",
        str(tmp_path / "classes.txt"),
    )
    assert done.returncode == 0, done.stderr
    record = torch.load(tmp_path / "model.pth", weights_only=True)
    converted = models.create(**record["arch"]).eval()
    converted.load_state_dict(record["model"], strict=True)
    size = 224 if arch["dataset"] == "imagenet" else 32
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(converted(images), model(images), atol=1e-4, rtol=1e-4)
    assert record["classes"][:2] == ["class0", "class1"]


def test_released_models_without_a_shortcut_bn_convert_with_an_identity_bn(tmp_path):
    """fb's released ResNet-18/34/50 have no BN after the projection shortcut."""
    model = trained_like(models.create("resnet", 18, "imagenet"))
    for block in (model.layer2[0], model.layer3[0], model.layer4[0]):
        bn = block.shortcut[1]
        with torch.no_grad():
            bn.weight.fill_(1), bn.bias.zero_(), bn.running_mean.zero_()
            bn.running_var.fill_(1 - bn.eps)  # what the released network computes
    save(tmp_path / "released.t7", lua_network(model, drop_shortcut_bn=True))
    done = convert(tmp_path / "released.t7", tmp_path / "out.pth", "-depth", "18")
    assert done.returncode == 0, done.stderr
    record = torch.load(tmp_path / "out.pth", weights_only=True)
    converted = models.create(**record["arch"]).eval()
    converted.load_state_dict(record["model"])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(converted(images), model(images), atol=1e-4, rtol=1e-4)


def test_the_wrong_depth_is_named(tmp_path):
    model = trained_like(models.create("resnet", 20, "cifar10"))
    save(tmp_path / "model.t7", lua_network(model))
    done = convert(
        tmp_path / "model.t7", tmp_path / "out.pth", "-depth", "32", "-dataset", "cifar10"
    )
    assert done.returncode == 2
    assert "give the -netType / -depth / -cardinality it was trained with" in done.stderr
    (tmp_path / "text.t7").write_bytes(b"\x02\x00\x00\x00\x03\x00\x00\x00abc")  # a Lua string
    assert convert(tmp_path / "text.t7", tmp_path / "out.pth").stderr.startswith("error: ")
