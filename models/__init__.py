"""Model zoo: create(netType, depth, dataset, ...) builds the Lua's networks by name."""

import inspect
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import StochasticDepth

from datasets.table import DATASETS, is_small
from errors import UsageError, quoted
from models import backbone as backbones
from models import preresnet, resnest, resnet, resnext, senet, wrn


class Shape(NamedTuple):
    """create()'s arguments as every builder takes them."""

    depth: int
    small: bool  # the CIFAR-shaped network of 32 x 32 (or 28 x 28) images
    n_classes: int
    shortcut: str
    bottleneck: str
    base_width: int
    cardinality: int
    se: int
    radix: int
    widen_factor: int
    dropout: float


class NetworkKind(NamedTuple):
    """A -netType: how it is built, what it is called, what it takes."""

    build: Callable[[Shape], nn.Module]
    title: str  # as the Lua's startup lines print it
    small_images: bool  # it has a CIFAR-shaped network
    se: bool  # it takes -se (squeeze-and-excitation in every block)
    depth: int  # the depth when -depth is unset, on folder datasets
    small_depth: int  # the same on the small-image datasets
    folder_images: bool = True  # it has an ImageNet-shaped network


NETWORKS = {
    "resnet": NetworkKind(
        lambda s: resnet.build(s.depth, s.small, s.n_classes, s.shortcut, s.se),
        "ResNet", small_images=True, se=True, depth=34, small_depth=20,
    ),
    "preresnet": NetworkKind(
        lambda s: preresnet.build(s.depth, s.small, s.n_classes, s.shortcut),
        "PreResNet", small_images=True, se=False, depth=34, small_depth=20,
    ),
    "resnext": NetworkKind(  # the ResNeXt fork prints ResNet
        lambda s: resnext.build(s.depth, s.small, s.n_classes, s.shortcut, s.bottleneck,
                                s.base_width, s.cardinality, s.se),
        "ResNet", small_images=True, se=True, depth=50, small_depth=29,
    ),
    "resnest": NetworkKind(
        lambda s: resnest.build(s.depth, s.n_classes, s.radix, s.cardinality, s.base_width),
        "ResNeSt", small_images=False, se=False, depth=50, small_depth=20,
    ),
    "senet": NetworkKind(
        lambda s: senet.build(s.depth, s.n_classes),
        "SENet", small_images=False, se=True, depth=154, small_depth=20,
    ),
    "wrn": NetworkKind(
        lambda s: wrn.build(s.depth, s.n_classes, s.widen_factor, s.dropout),
        "WRN", small_images=True, se=False, depth=28, small_depth=28, folder_images=False,
    ),
}  # fmt: skip
NET_TYPES = tuple(NETWORKS)
# The flags that choose the network (create()'s arguments of the same names).
ARCH_FLAGS = ("netType", "depth", "shortcutType", "bottleneckType", "baseWidth", "cardinality",
              "se", "radix", "widenFactor", "dropout")  # fmt: skip
# ImageNet's Wide ResNet is a ResNeXt of one group twice as wide (torchvision's wide_resnet50_2).
WRN_50_2 = "-netType resnext -depth 50 -cardinality 1 -baseWidth 128"


def default_depth(net_type: str, dataset: str) -> int:
    """The depth of -netType when -depth is unset (the Lua's 34 is not a ResNeXt depth)."""
    kind = NETWORKS[net_type]
    return kind.small_depth if is_small(dataset) else kind.depth


def default_shortcut(net_type: str, dataset: str) -> str:
    """The Lua's default shortcut: B on ImageNet; on CIFAR, A (fb) or B (ResNeXt)."""
    if is_small(dataset) and net_type != "resnext":
        return "A"
    return "B"


def n_outputs(dataset: str, n_classes: int | None) -> int:
    """Classifier width: nClasses when given, else the dataset's own class count."""
    if n_classes is None:
        if dataset not in DATASETS:
            raise ValueError(
                f"dataset {quoted(dataset)} has no fixed class count; give nClasses"
                f" (fixed: {', '.join(DATASETS)})"
            )
        return DATASETS[dataset].classes
    if n_classes < 1:
        raise ValueError(f"nClasses must be at least 1; got {n_classes}")
    return n_classes


class NetworkOptions(NamedTuple):
    """create()'s options beyond the network type, depth and dataset, named as the Lua's
    flags (and as a model file's arch record keys them)."""

    shortcutType: str = ""
    bottleneckType: str = "resnext_C"
    baseWidth: int = 64
    cardinality: int = 1
    nClasses: int | None = None
    se: int = 0  # squeeze-and-excitation ratio of every block (resnet, resnext)
    radix: int = 2  # ResNeSt's number of splits
    widenFactor: int = 1  # the Wide ResNet's
    dropout: float = 0.0  # between a Wide ResNet block's convolutions


def options_record(record: type, options: Mapping) -> NamedTuple:
    """record(**options); ValueError naming an option it does not have and the valid ones."""
    unknown = sorted(set(options) - set(record._fields))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]}; valid: {', '.join(record._fields)}")
    return record(**options)


def create(netType: str, depth: int, dataset: str, **options) -> nn.Module:
    """Build a network mapping images to logits, options as NetworkOptions names them;
    ValueError lists what is valid."""
    given = options_record(NetworkOptions, options)
    if netType not in NET_TYPES:
        raise ValueError(f"unknown netType {quoted(netType)}; valid: {', '.join(NET_TYPES)}")
    n_classes = n_outputs(dataset, given.nClasses)
    kind = NETWORKS[netType]
    small = is_small(dataset)
    if given.se and not kind.se:
        raise ValueError("se (squeeze-and-excitation) is for netType resnet and resnext")
    if small and not kind.small_images:
        raise ValueError(
            f"netType {netType} is for ImageNet-shaped images (imagenet or a"
            " class-per-folder dataset), not the 32 x 32 datasets"
        )
    check_wide_arguments(netType, small, given.widenFactor, given.dropout)
    if netType == "senet":
        check_senet_arguments(given.cardinality, given.baseWidth, given.se)
    shortcut = given.shortcutType or default_shortcut(netType, dataset)
    shape = Shape(
        depth, small, n_classes, shortcut, given.bottleneckType, given.baseWidth,
        given.cardinality, given.se, given.radix, given.widenFactor, given.dropout,
    )  # fmt: skip
    return kind.build(shape)


def user_network(arch: Mapping, frozen_stages: int = -1) -> nn.Module:
    """create(**arch) for a network the user named (by flags, or in a file given), its
    first frozen_stages stages frozen: what create() and set_frozen() refuse as a library
    does, with ValueError, is the user's UsageError here."""
    try:
        network = create(**arch)
        backbones.set_frozen(network, frozen_stages)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return network


def check_arch(arch: Mapping, frozen_stages: int = -1) -> None:
    """UsageError naming what is wrong when the user's network options build no network,
    before any work (on the meta device: shapes only, no memory, no time)."""
    with torch.device("meta"):
        user_network(arch, frozen_stages)


def check_wide_arguments(net_type: str, small: bool, widen_factor: int, dropout: float) -> None:
    """widenFactor and dropout are the Wide ResNet's, and it is built for small images."""
    if net_type != "wrn" and (widen_factor, dropout) != (1, 0.0):
        raise ValueError("widenFactor and dropout are for netType wrn (the Wide ResNets)")
    if net_type == "wrn" and not small:
        raise ValueError(
            "netType wrn is the Wide ResNet of CIFAR-sized images; ImageNet's WRN-50-2 is"
            f" {WRN_50_2}"
        )


def check_senet_arguments(cardinality: int, base_width: int, se: int) -> None:
    """SENet-154 is one network: its own or the default flags, nothing else."""
    own = (senet.CARDINALITY, senet.BASE_WIDTH)
    if (cardinality, base_width) not in ((1, 64), own) or se not in (0, senet.SE_RATIO):
        raise ValueError(
            "netType senet is SENet-154 (64 groups of width 4, SE ratio 16): leave"
            " cardinality, baseWidth and se unset, or use netType resnext with se"
        )


# create() arguments added after checkpoints were first written, with the value that
# builds the network such a checkpoint holds.
LATER_ARGUMENTS = {"se": 0, "radix": 2, "widenFactor": 1, "dropout": 0.0}


def complete_arch(arch: Mapping, source: str) -> dict:
    """A saved arch (from the file `source`, which may come from someone else) checked, with
    the arguments added since it was saved at their old meaning."""
    check_recorded_arch(arch, source)
    return {**LATER_ARGUMENTS, **arch}


def check_recorded_arch(arch, source: str) -> None:
    """A UsageError naming the first key of a recorded arch that create() does not take, or
    whose value is not of create()'s type (a depth of '18' is text, not the number 18)."""
    if not isinstance(arch, Mapping):
        raise UsageError(f"{source} records its network as {quoted(arch)}, not as a table of"
                         " create()'s arguments: not a model file of this tool")  # fmt: skip
    types = {name: OTHER_TYPES.get(name, int) for name in full_arch({})}
    for key, value in arch.items():
        if key not in types:
            raise UsageError(
                f"{source} records a network argument {quoted(key)} that this tool's networks"
                f" do not take (they take {', '.join(types)}): a file of another tool or version"
            )
        wanted = types[key]
        if not (isinstance(value, wanted) and not isinstance(value, bool)) and not (
            key == "nClasses" and value is None
        ):
            kind = {str: "text", int: "a whole number"}.get(wanted, "a number")
            raise UsageError(f"{source} records {key} {quoted(value)}, which is not {kind}: the"
                             " file is damaged or not of this tool")  # fmt: skip


# create()'s arguments that are not whole numbers, and the types they are recorded as.
OTHER_TYPES = {"netType": str, "dataset": str, "shortcutType": str, "bottleneckType": str,
               "dropout": (float, int)}  # fmt: skip


def full_arch(arch: Mapping) -> dict:
    """arch with every create() argument it leaves out at create()'s default."""
    named = {
        name: arch.get(name, inspect.Parameter.empty) for name in ("netType", "depth", "dataset")
    }
    return named | {
        name: arch.get(name, default) for name, default in NetworkOptions._field_defaults.items()
    }


def describe(
    netType: str,
    depth: int,
    dataset: str,
    *,
    bottleneckType: str = "resnext_C",
    se: int = 0,
    widenFactor: int = 1,
    **_,
) -> list[str]:
    """The startup lines the Lua printed while building this network (SE- before the name
    of a squeeze-and-excitation network; WRN-depth-k for a Wide ResNet)."""
    lines = [resnext.DEPLOY_LINES[bottleneckType]] if netType == "resnext" else []
    name = ("SE-" if se and netType != "senet" else "") + NETWORKS[netType].title
    if netType == "wrn":
        depth = f"{depth}-{widenFactor}"
    if not is_small(dataset):
        where = "ImageNet"
    elif netType == "resnext":
        where = dataset  # resnext.lua prints opt.dataset as it is
    else:
        where = DATASETS[dataset].title
    return lines + [f" | {name}-{depth} {where}"]


def complexity(model: nn.Module, input_size: int | tuple[int, int]) -> tuple[int, int]:
    """(parameters, multiply-adds) of one forward pass on a 3-channel image of input_size."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    parameter = next(model.parameters())
    image = torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with counter, torch.no_grad():
        model(image)
    model.train(was_training)
    n_params = sum(p.numel() for p in model.parameters())
    return n_params, counter.get_total_flops() // 2  # the counter reports 2 FLOPs per MAC


class BackboneOptions(NamedTuple):
    """backbone()'s options, named as mmdetection's ResNet (and ResNeSt) options are."""

    cardinality: int = 1
    baseWidth: int = 64
    bottleneckType: str = "resnext_C"
    se: int = 0
    radix: int = 2
    style: str = "pytorch"
    strides: tuple = (1, 2, 2, 2)
    dilations: tuple = (1, 1, 1, 1)
    outIndices: tuple = (0, 1, 2, 3)
    frozenStages: int = -1
    normEval: bool = False
    zeroInitResidual: bool = False


def backbone(netType: str, depth: int, **options) -> nn.Module:
    """An ImageNet ResNet / ResNeXt (SE or not), SENet-154 or ResNeSt as a detection
    backbone: forward gives the outputs of the stages in outIndices (0-3: C2-C5), and the
    options (BackboneOptions) mean what mmdetection's options of the same names mean;
    ValueError lists what is valid."""
    given = options_record(BackboneOptions, options)
    if netType not in ("resnet", "resnext", "senet", "resnest"):
        raise ValueError(
            "the backbone is built for netType resnet, resnext, senet and resnest; got"
            f" {quoted(netType)}"
        )
    network = create(
        netType,
        depth,
        "imagenet",
        cardinality=given.cardinality,
        baseWidth=given.baseWidth,
        bottleneckType=given.bottleneckType,
        se=given.se,
        radix=given.radix,
        nClasses=1,
    )
    return backbones.backbone(
        network,
        style=given.style,
        strides=given.strides,
        dilations=given.dilations,
        out_indices=given.outIndices,
        frozen_stages=given.frozenStages,
        norm_eval=given.normEval,
        zero_init=given.zeroInitResidual,
    )


def set_drop_path(model: nn.Module, rate: float) -> None:
    """-dropPath: stochastic depth on every residual block's branch (torchvision's
    StochasticDepth, whole samples), its rate rising linearly with the block's place from 0
    at the first block to `rate` at the last, as timm's ResNet. No weights are added."""
    blocks = [block for name in model.stage_names for block in getattr(model, name)]
    for index, block in enumerate(blocks):
        share = rate * index / max(len(blocks) - 1, 1)
        block.drop_path = StochasticDepth(share, "row") if share else None


def set_head_dropout(model: nn.Module, rate: float) -> None:
    """-headDropout: dropout of the pooled features before the classifier (timm's --drop)."""
    model.dropout = nn.Dropout(rate)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Recompute each residual block in the backward pass instead of storing its activations."""
    model.checkpoint_blocks = enabled


def replace_classifier(model: nn.Module, n_classes: int) -> None:
    """Swap the final Linear for a fresh n_classes-way one (default weight init, zero bias)."""
    old = model.fc
    model.fc = nn.Linear(old.in_features, n_classes, device=old.weight.device)
    nn.init.zeros_(model.fc.bias)


def arch_flags(arch: dict) -> str:
    """The command-line flags that build the network of arch."""
    flags = f"-netType {arch['netType']} -depth {arch['depth']}"
    if arch["netType"] == "resnext" or (
        arch["netType"] == "resnest" and (arch["cardinality"], arch["baseWidth"]) != (1, 64)
    ):
        flags += f" -cardinality {arch['cardinality']} -baseWidth {arch['baseWidth']}"
    if arch["netType"] == "resnest" and arch.get("radix", 2) != 2:
        flags += f" -radix {arch['radix']}"
    if arch.get("se"):
        flags += f" -se {arch['se']}"
    if arch["netType"] == "wrn":
        flags += f" -widenFactor {arch.get('widenFactor', 1)}"
        flags += f" -dropout {arch['dropout']:g}" if arch.get("dropout") else ""
    return flags
