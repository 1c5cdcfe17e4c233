"""Convert a Lua Torch model (.t7: fb.resnet.torch's or ResNeXt's model_<epoch>.t7 and
released models) into this tool's model file:

    python scripts/convert_t7.py IN.t7 OUT.pth [-netType resnet] [-depth 50] [-dataset imagenet]
                                 [-cardinality 1] [-baseWidth 64] [-shortcutType B] [-classes FILE]

The .t7 is read with the torchfile package (pip install torchfile). Its nn.Sequential
(built in the Lua's order: the stem, then each block's convolutions, batch normalisations
and shortcut, then the classifier) is walked depth first; the convolutions, batch
normalisations and the final Linear are matched in order to the network the flags describe
(the Lua's defaults; -depth and -netType as trained), shape by shape, and the result is
checked to load strictly. The released ResNet-18/34/50 have no BN after the projection
shortcut's convolution: that BN becomes the identity. Other layouts (a BN after the
addition, as in the released ResNet-50) are refused with the first mismatch named.
-classes: a text file with one class name per line (else none stored).
"""

import argparse
import os
import struct
import sys

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402 - after the repository root is on the path
import models  # noqa: E402
from errors import UsageError  # noqa: E402

CONVOLUTIONS = ("nn.SpatialConvolution", "cudnn.SpatialConvolution", "nn.SpatialConvolutionMM")
BATCH_NORMS = ("nn.SpatialBatchNormalization", "cudnn.SpatialBatchNormalization")
LINEARS = ("nn.Linear",)


class ConversionError(UsageError):
    """A .t7 that cannot become this network; main prints one 'error:' line."""


def typename(module) -> str:
    name = module.torch_typename()
    return name.decode() if isinstance(name, bytes) else name


def field(module, name: str):
    """A field of a Torch object (None when absent; a module without fields reads as a list)."""
    fields = module._obj
    return fields.get(name) if isinstance(fields, dict) else None


def tensor(value) -> torch.Tensor | None:
    """A torchfile numpy array as a float32 torch tensor (None stays None)."""
    if value is None or (isinstance(value, np.ndarray) and value.size == 0):
        return None
    return torch.from_numpy(np.ascontiguousarray(value)).float()


def lua_layers(module) -> list[tuple[str, dict]]:
    """(kind, tensors) of every parametrised layer, depth first: the order of the Lua code."""
    kind = typename(module)

    def read(*names):
        return {name: tensor(field(module, name)) for name in names}

    if kind in CONVOLUTIONS:
        bias = read("bias")["bias"]
        if bias is not None and bias.abs().max() > 0:
            raise ConversionError("a convolution has a non-zero bias; this network has none")
        return [("conv", read("weight"))]
    if kind in BATCH_NORMS:
        tensors = read("weight", "bias", "running_mean", "running_var")
        std = read("running_std")["running_std"]  # nn before mid-2016 kept 1 / std
        if tensors["running_var"] is None and std is not None:
            tensors["running_var"] = 1 / std**2 - (field(module, "eps") or 1e-5)
        return [("bn", tensors)]
    if kind in LINEARS:
        return [("fc", read("weight", "bias"))]
    children = field(module, "modules") or []
    return [layer for child in children for layer in lua_layers(child)]


def our_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(kind, name, module) of the network's parametrised layers in definition order."""
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.Linear: "fc"}
    return [(kinds[type(m)], name, m) for name, m in model.named_modules() if type(m) in kinds]


def identity_bn(module: nn.BatchNorm2d) -> dict:
    """BN values that pass their input through unchanged."""
    channels = module.num_features
    return {
        "weight": torch.ones(channels),
        "bias": torch.zeros(channels),
        "running_mean": torch.zeros(channels),
        "running_var": torch.full((channels,), 1 - module.eps),
    }


def aligned(ours: list, theirs: list) -> list[dict]:
    """The .t7's tensors for each of our layers, in order. The released ResNet-18/34/50 have
    no BN after the projection shortcut's convolution: that BN of ours becomes the identity."""
    matched, position = [], 0
    for kind, name, module in ours:
        lua_kind, tensors = theirs[position] if position < len(theirs) else (None, None)
        if kind == "bn" and ".shortcut." in name and lua_kind != "bn":
            matched.append(identity_bn(module))
            continue
        if kind != lua_kind:
            raise ConversionError(
                f"layer {len(matched) + 1} ({name}) is a {kind} here, a {lua_kind or 'nothing'}"
                " in the .t7; give the -netType / -depth / -cardinality it was trained with"
            )
        matched.append(tensors)
        position += 1
    if position != len(theirs):
        raise ConversionError(
            f"the .t7 has {len(theirs) - position} more parametrised layers than this network;"
            " give the -netType / -depth / -cardinality it was trained with"
        )
    return matched


def convert(lua_model, arch: dict) -> dict:
    """The state_dict of models.create(**arch) filled from the .t7's layers."""
    model = models.user_network(arch)  # the flags given with the .t7
    ours = our_layers(model)
    state = {}
    for (_, name, module), tensors in zip(ours, aligned(ours, lua_layers(lua_model)), strict=True):
        for key, value in tensors.items():
            expected = getattr(module, key)
            if value is None or value.numel() != expected.numel():
                got = "none" if value is None else tuple(value.shape)
                raise ConversionError(
                    f"{name}.{key}: the .t7 has shape {got}, this network {tuple(expected.shape)};"
                    " give the -netType / -depth / -cardinality it was trained with"
                )
            state[f"{name}.{key}"] = value.reshape(expected.shape)  # old nn kept 2-D conv weights
    for key, value in model.state_dict().items():
        state.setdefault(key, value)  # num_batches_tracked: not in the Lua
    model.load_state_dict(state, strict=True)
    return model.state_dict()


def read_t7(torchfile, path: str):
    """The object a .t7 file holds, or ConversionError naming the file."""
    try:
        return torchfile.load(path, utf8_decode_strings=True)
    except (torchfile.T7ReaderException, struct.error, EOFError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot read {path} as a Torch7 file ({exc})") from None


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("-netType", default="resnet")
    parser.add_argument("-depth", type=int, default=50)
    parser.add_argument("-dataset", default="imagenet")
    parser.add_argument("-cardinality", type=int, default=1)
    parser.add_argument("-baseWidth", type=int, default=64)
    parser.add_argument("-shortcutType", default="")
    parser.add_argument("-bottleneckType", default="resnext_C")
    parser.add_argument("-classes", help="file with one class name per line")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        import torchfile
    except ImportError:
        print(
            "error: convert_t7.py reads .t7 files with torchfile: pip install torchfile",
            file=sys.stderr,
        )
        return 2
    try:
        lua_model = read_t7(torchfile, args.input)
        if not hasattr(lua_model, "torch_typename"):
            raise ConversionError(
                f"{args.input} holds no Torch object (a {type(lua_model).__name__})"
            )
        linear = [tensors for kind, tensors in lua_layers(lua_model) if kind == "fc"]
        arch = {
            "netType": args.netType,
            "depth": args.depth,
            "dataset": args.dataset,
            "shortcutType": args.shortcutType,
            "bottleneckType": args.bottleneckType,
            "baseWidth": args.baseWidth,
            "cardinality": args.cardinality,
            "nClasses": linear[-1]["weight"].shape[0] if linear else None,
        }
        classes = None
        if args.classes:
            with open(args.classes) as handle:
                classes = [line.strip() for line in handle if line.strip()]
        state = convert(lua_model, arch)
    except (UsageError, OSError, EOFError) as exc:  # ConversionError, unreadable files
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    record = {"model": state, "arch": arch, "classes": classes}
    checkpoints.atomic_save(record, args.output)
    print(f"=> wrote {args.output} ({arch['netType']}-{arch['depth']}, {arch['nClasses']} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
