"""Command-line options: every flag of fb.resnet.torch and ResNeXt, with the Lua's names."""

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from errors import UsageError, check_choice, closest

PRECISIONS = ("single", "double", "half", "bf16", "auto")
INTERPOLATIONS = ("bicubic", "bilinear")
# -recipe: published training recipes as flag values; flags given on the command line win.
# "folder" values apply to -dataset imagenet (folder datasets), "small" to the others.
# What the three procedures of ResNet strikes back share (each changes some of it).
RSB = {"batchSize": 2048, "LR": 0.005, "optimizer": "lamb", "weightDecay": 0.02,
       "normWeightDecay": 0.0, "biasWeightDecay": 0.0, "lrSchedule": "cosine", "lrMin": 1e-6,
       "warmupEpochs": 5.0, "warmupStart": 1e-4, "loss": "bce", "mixup": 0.1, "cutmix": 1.0,
       "autoAugment": "rand-m7-mstd0.5-inc1", "trainCrop": 224, "valResize": 236,
       "valCrop": 224}  # fmt: skip
RECIPES = {
    "fb": {  # fb.resnet.torch: ResNet on ImageNet and CIFAR (the Lua's defaults otherwise)
        "folder": {"batchSize": 256, "nEpochs": 90},
        "small": {"batchSize": 128, "nEpochs": 164},
    },
    "resnext": {  # the ResNeXt paper's ImageNet and CIFAR runs
        "folder": {"batchSize": 256, "nEpochs": 100},
        "small": {"batchSize": 128, "nEpochs": 300, "weightDecay": 5e-4},
    },
    "torchvision": {  # torchvision's ResNet-50 IMAGENET1K_V2 (80.86% top-1)
        "all": {"batchSize": 1024, "LR": 0.5, "nEpochs": 600, "lrSchedule": "cosine",
                "warmupEpochs": 5.0, "warmupStart": 0.01, "autoAugment": "ta_wide",
                "randomErasing": 0.1, "labelSmoothing": 0.1, "mixup": 0.2, "cutmix": 1.0,
                "weightDecay": 2e-5, "normWeightDecay": 0.0, "ema": 0.999966, "emaEvery": 32,
                "repeatedAug": 4, "nesterov": False},
        "folder": {"trainCrop": 176, "valResize": 232, "valCrop": 224},
    },
    "resnest": {  # the ResNeSt paper's ImageNet recipe (without DropBlock)
        "all": {"batchSize": 8192, "LR": 3.2, "nEpochs": 270, "lrSchedule": "cosine",
                "warmupEpochs": 5.0, "labelSmoothing": 0.1, "mixup": 0.2,
                "autoAugment": "imagenet", "normWeightDecay": 0.0, "biasWeightDecay": 0.0,
                "zeroInitResidual": True},
    },
    # ResNet strikes back (Wightman et al., 2021), procedures A1 / A2 / A3 for ResNet-50 at a
    # global batch of 2048, as mmpretrain's configs write them.
    "rsb-a1": {"folder": {**RSB, "nEpochs": 600, "weightDecay": 0.01, "mixup": 0.2,
                          "repeatedAug": 3, "dropPath": 0.05}},
    "rsb-a2": {"folder": {**RSB, "nEpochs": 300, "repeatedAug": 3, "dropPath": 0.05}},
    "rsb-a3": {"folder": {**RSB, "nEpochs": 100, "LR": 0.008, "trainCrop": 160,
                          "autoAugment": "rand-m6-mstd0.5-inc1"}},
    "random-erasing": {  # the Random Erasing paper's CIFAR / Fashion-MNIST runs (its code's)
        "small": {"batchSize": 128, "nEpochs": 300, "lrSchedule": "step", "lrSteps": (151, 226),
                  "nesterov": False, "weightDecay": 5e-4, "randomErasing": 0.5,
                  "erasingStyle": "authors"},
    },
    "fast-small": {  # CIFAR-sized networks to the Random Erasing paper's figures in 40 epochs
        "small": {"batchSize": 128, "nEpochs": 40, "lrSchedule": "cosine", "warmupEpochs": 1.0,
                  "weightDecay": 5e-4, "randomErasing": 0.25, "erasingStyle": "paper",
                  "precision": "auto"},  # p 0.25: below p 0.5 on both seeds (docs/paper-tables)
    },
}  # fmt: skip
INT_LIMIT = 2**31 - 1
# More loader processes than this per core only wait on one another (and on memory).
WORKERS_PER_CORE = 8
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


class Names(NamedTuple):
    """What the modules own that some flags name (plan.NAMES): the parser checks the flags
    against these, lists them in -h, and fills unset defaults from them."""

    datasets: Mapping[str, int]  # -dataset names -> the -nEpochs that 0 means
    net_types: Sequence[str]
    default_depth: Callable[[str, str], int]  # (netType, dataset) -> the depth unset means
    policies: Sequence[str]  # -autoAugment
    schedules: Sequence[str]  # -lrSchedule
    losses: Sequence[str]  # -loss
    optimizers: Sequence[str]  # -optimizer
    is_weights_name: Callable[[str], bool]  # -weights
    devices: Sequence[str]  # -device
    memory_formats: Sequence[str]  # -memoryFormat


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, with no usage dump."""

    def error(self, message: str):
        raise UsageError(f"{message} (see -h)")


def lua_bool(text: str) -> bool:
    """'true'/'false' as the Lua flags take them (and 1/0, yes/no)."""
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def bounded_int(text: str) -> int:
    """An integer that fits the C int every count and size ends up in."""
    value = int(text)
    if abs(value) > INT_LIMIT:
        raise ValueError(text)
    return value


bounded_int.__name__ = "int"  # argparse: "argument -batchSize/--batchSize: invalid int value"


def every_or_auto(text: str) -> int | str:
    """'auto' or an interval in iterations."""
    return "auto" if text == "auto" else bounded_int(text)


every_or_auto.__name__ = "'auto' or int"


def seed_int(text: str) -> int:
    """A seed: any integer the 64-bit generators take."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise ValueError(text)
    return value


seed_int.__name__ = "seed (0 to 2^63 - 1)"


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite_float.__name__ = "float"  # argparse names the type in its 'invalid float value' message


def epoch_list(text: str) -> tuple[int, ...]:
    """Comma-separated epochs, increasing: '30,60,90' (empty: none)."""
    epochs = tuple(int(part) for part in text.split(",") if part.strip())
    if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise ValueError(text)
    return epochs


epoch_list.__name__ = "list of increasing epochs (e.g. 30,60,90)"


def float_range(text: str) -> tuple[float, float]:
    """'low,high': two positive finite floats, low <= high."""
    low, high = (finite_float(part) for part in text.split(","))
    if not 0 < low <= high:
        raise ValueError(text)
    return low, high


float_range.__name__ = "range low,high (0 < low <= high)"

# (name, type, default, help); booleans are Lua-style strings 'true' / 'false'.
FLAGS = [
    (
        "data",
        str,
        "",
        "Path to dataset: a folder with train/ and val/, tar shards or Hugging Face parquet /"
        " Arrow files (imagenet), or the CIFAR / Fashion-MNIST files",
    ),
    ("dataset", str, "imagenet", "Options: {datasets}"),
    (
        "recipe",
        str,
        "none",
        "Set the flags of a published recipe: none | " + " | ".join(RECIPES) + " (flags given"
        " win; see docs/recipes.md) (new)",
    ),
    (
        "config",
        str,
        "none",
        "A JSON or YAML file of flags (a run's opts.json replays it); flags given on the command"
        " line win (new)",
    ),
    ("manualSeed", seed_int, 0, "Manually set RNG seed (0 is a seed too)"),
    ("nGPU", bounded_int, 1, "Number of GPUs to use by default (0: CPU)"),
    (
        "device",
        str,
        "auto",
        "Options: {devices} (auto: CUDA if present, then MPS, then the CPU) (new)",
    ),
    ("backend", str, "cudnn", "Options: cudnn | cunn (accepted, unused, as in the Lua)"),
    ("cudnn", str, "fastest", "Options: fastest | default | deterministic"),
    ("gen", str, "gen", "Path to save generated files (file index, downloads)"),
    ("precision", str, "single", "Options: " + " | ".join(PRECISIONS)),
    (
        "memoryFormat",
        str,
        "auto",
        "Options: {memory_formats} (auto: channels_last on GPUs and AVX-512 CPUs, else"
        " contiguous) (new)",
    ),
    (
        "hostAllocator",
        str,
        "cache",
        "cache: keep freed host memory for reuse (glibc); system: the C library's default (new)",
    ),
    ("compile", lua_bool, False, "torch.compile the model (new; needs a C++ compiler on CPU)"),
    ("nThreads", bounded_int, 2, "number of data loading threads (0: load in the main process)"),
    ("nEpochs", bounded_int, 0, "Number of total epochs to run (0: imagenet 100, CIFAR 300)"),
    ("epochNumber", bounded_int, 1, "Manual epoch number (useful on restarts)"),
    ("batchSize", bounded_int, 32, "mini-batch size (1 = pure stochastic)"),
    ("testOnly", lua_bool, False, "Run on validation set only"),
    ("tenCrop", lua_bool, False, "Ten-crop testing"),
    ("save", str, "checkpoints", "Directory in which to save checkpoints"),
    ("resume", str, "none", "Resume from the latest checkpoint in this directory"),
    ("LR", finite_float, 0.1, "initial learning rate"),
    (
        "optimizer",
        str,
        "sgd",
        "Options: {optimizers} (sgd: the Lua's; lamb and lars are timm's) (new)",
    ),
    ("momentum", finite_float, 0.9, "momentum"),
    (
        "nesterov",
        lua_bool,
        True,
        "Nesterov momentum, as the Lua's SGD (false: plain momentum) (new)",
    ),
    ("weightDecay", finite_float, 1e-4, "weight decay"),
    (
        "normWeightDecay",
        finite_float,
        None,
        "Weight decay of normalisation layers' weights and biases (unset: -weightDecay) (new)",
    ),
    (
        "biasWeightDecay",
        finite_float,
        None,
        "Weight decay of every bias, norm layers' too (unset: as the other weights) (new)",
    ),
    (
        "lrSchedule",
        str,
        "lua",
        "Options: {schedules} (lua: the Lua's per-dataset steps; cosine: per"
        " iteration to -lrMin) (new)",
    ),
    ("lrSteps", epoch_list, (), "-lrSchedule step: epochs from which the LR is x -lrGamma (new)"),
    ("lrGamma", finite_float, 0.1, "-lrSchedule step: factor at each of -lrSteps (new)"),
    ("lrMin", finite_float, 0.0, "-lrSchedule cosine: the LR at the end (new)"),
    (
        "warmupEpochs",
        finite_float,
        0.0,
        "Linear LR warm-up over the first N epochs, per iteration (new)",
    ),
    ("warmupStart", finite_float, 0.01, "Warm-up: the first LR as a share of the LR (new)"),
    (
        "dropPath",
        finite_float,
        0.0,
        "Stochastic depth: drop each residual branch per sample, rate rising to N at the last"
        " block (timm's --drop-path) (new)",
    ),
    ("headDropout", finite_float, 0.0, "Dropout before the classifier (timm's --drop) (new)"),
    ("labelSmoothing", finite_float, 0.0, "Label smoothing of the loss's targets (new)"),
    (
        "loss",
        str,
        "ce",
        "Options: {losses} (ce: the Lua's cross-entropy; bce: binary cross-entropy of each"
        " class, as ResNet strikes back) (new)",
    ),
    (
        "bceTargetThreshold",
        finite_float,
        0.0,
        "-loss bce: targets above it become 1, the others 0 (0: kept as they are) (new)",
    ),
    (
        "accumSteps",
        bounded_int,
        1,
        "Gradient accumulation: each step's -batchSize is computed in N micro-batches (new)",
    ),
    ("clipGradNorm", finite_float, 0.0, "Clip the gradients' global norm to N (0: off) (new)"),
    (
        "mixup",
        finite_float,
        0.0,
        "MixUp with Beta(a, a) (0: off; with -cutmix, one per batch) (new)",
    ),
    ("cutmix", finite_float, 0.0, "CutMix with Beta(a, a) (0: off) (new)"),
    (
        "ema",
        finite_float,
        0.0,
        "Evaluate and save an exponential moving average of the weights, decay per step"
        " (0: off) (new)",
    ),
    ("emaEvery", bounded_int, 1, "-ema: update the average every N steps (new)"),
    ("netType", str, "resnext", "Options: {net_types}"),
    ("bottleneckType", str, "resnext_C", "Options: resnet | resnext_B | resnext_C"),
    (
        "depth",
        bounded_int,
        None,
        "ResNet depth (unset: resnext 50 ImageNet / 29 CIFAR; resnet and preresnet 34 / 20;"
        " wrn 28)",
    ),
    ("baseWidth", bounded_int, 64, "ResNet base width"),
    ("cardinality", bounded_int, 1, "ResNet cardinality"),
    ("radix", bounded_int, 2, "ResNeSt: splits of each split-attention convolution (new)"),
    (
        "se",
        bounded_int,
        0,
        "Squeeze-and-excitation ratio in every block, resnet / resnext (0: none; SENet: 16) (new)",
    ),
    ("widenFactor", bounded_int, 1, "netType wrn: widths 16k, 32k, 64k (WRN-depth-k) (new)"),
    ("dropout", finite_float, 0.0, "netType wrn: dropout between each block's convolutions (new)"),
    ("shortcutType", str, "", "Options: A | B | C (unset: B; A for CIFAR resnet/preresnet)"),
    ("retrain", str, "none", "Path to model to retrain with (ours or a torchvision state_dict)"),
    (
        "weights",
        str,
        "none",
        "Start from published weights by name, torchvision's (ResNet50_Weights.IMAGENET1K_V2,"
        " ResNet50_Weights.DEFAULT) or timm's (timm/resnest50d.in1k), or a file or folder of"
        " scripts/export.py; the network comes with them (new)",
    ),
    ("optimState", str, "none", "Path to an optimState to reload from"),
    (
        "shareGradInput",
        lua_bool,
        False,
        "Save memory: recompute each residual block in the backward pass (activation"
        " checkpointing; the Lua shared gradInput buffers)",
    ),
    (
        "optnet",
        lua_bool,
        False,
        "Save memory as -shareGradInput does (activation checkpointing; the Lua used optnet)",
    ),
    ("resetClassifier", lua_bool, False, "Reset the fully connected layer for fine-tuning"),
    (
        "frozenStages",
        bounded_int,
        -1,
        "Fine-tuning: freeze the stem (0) and stages 1..N (-1: none) (new)",
    ),
    ("normEval", lua_bool, False, "Fine-tuning: keep every BatchNorm in eval mode (new)"),
    ("zeroInitResidual", lua_bool, False, "Start each residual branch's last BN gamma at 0 (new)"),
    (
        "nClasses",
        bounded_int,
        0,
        "Number of classes (0: the dataset's own; with -resetClassifier, the new classifier's)",
    ),
    (
        "checkpointEvery",
        bounded_int,
        0,
        "Also checkpoint every N iterations (0: once per epoch) (new)",
    ),
    ("keepCheckpoints", bounded_int, 0, "Keep the last K per-epoch checkpoints (0: all) (new)"),
    (
        "cropSize",
        bounded_int,
        224,
        "Folder datasets: train / val crop side (val resized to it / 0.875) (new)",
    ),
    ("trainCrop", bounded_int, 0, "Folder datasets: training crop side (0: -cropSize) (new)"),
    (
        "valResize",
        bounded_int,
        0,
        "Folder datasets: short side val images are resized to (0: -valCrop / 0.875) (new)",
    ),
    ("valCrop", bounded_int, 0, "Folder datasets: val centre crop side (0: -cropSize) (new)"),
    (
        "valInterpolation",
        str,
        "bicubic",
        "Folder datasets: bicubic | bilinear, the val resize (-weights: theirs) (new)",
    ),
    (
        "autoAugment",
        str,
        "none",
        "Augmentation policy: {policies} (torchvision's; replaces the Lua's"
        " colour jitter on folder datasets) (new)",
    ),
    (
        "randomErasing",
        finite_float,
        0.0,
        "Erase a random box of each training image with this probability (new)",
    ),
    (
        "erasingStyle",
        str,
        "torchvision",
        "-randomErasing's box and fill: torchvision | paper (uniform aspect, random values) |"
        " authors (the paper's box, one constant) (new)",
    ),
    (
        "erasingArea",
        float_range,
        None,
        "-randomErasing: min,max of the box's share of the image (unset: the style's) (new)",
    ),
    (
        "erasingAspect",
        float_range,
        None,
        "-randomErasing: min,max of the box's height / width (unset: the style's) (new)",
    ),
    (
        "repeatedAug",
        bounded_int,
        1,
        "Repeated augmentation: each image of an epoch N times in a row, differently"
        " augmented (epoch length kept) (new)",
    ),
    (
        "decodeOnDevice",
        lua_bool,
        False,
        "Folder datasets: decode JPEGs on the training device, nvJPEG on CUDA (new)",
    ),
    (
        "overwrite",
        lua_bool,
        False,
        "Start afresh in a -save folder that holds another run, deleting its files (new)",
    ),
    ("tensorboard", lua_bool, True, "Also write TensorBoard scalars under <save>/tb (new)"),
    (
        "logger",
        str,
        "none",
        "Also log to experiment trackers: none, or wandb, mlflow, comma-separated (new)",
    ),
    ("syncBN", lua_bool, False, "Under torchrun: batch norm over the global batch (new)"),
    (
        "rendezvousTimeout",
        bounded_int,
        300,
        "srun / several processes: seconds to wait at start for every process of the job (new)",
    ),
    (
        "requeueSignal",
        str,
        "USR1,USR2",
        "Signals that save and, in a SLURM job, requeue it (sbatch --signal); none: off (new)",
    ),
    (
        "maxRequeues",
        bounded_int,
        20,
        "SLURM: restarts after which a requeue signal only saves (new)",
    ),
    (
        "printFreq",
        every_or_auto,
        "auto",
        "Print a training / test line every N iterations (auto: a bar on a terminal, else about"
        " 20 lines a pass with the time left) (new)",
    ),
    ("skipCorrupt", lua_bool, False, "Skip unreadable images instead of stopping (new)"),
    ("imageColumn", str, "image", "Hugging Face parquet / Arrow data: the images' column (new)"),
    ("labelColumn", str, "label", "Hugging Face parquet / Arrow data: the labels' column (new)"),
    (
        "shuffleBuffer",
        bounded_int,
        1024,
        "Parquet data and fetched shards: images shuffled together, from whole row groups or"
        " shards each loader worker holds (new)",
    ),
    (
        "shardSource",
        str,
        "",
        "Tar shards: fetch each from this path or pipe: command, {shard} its name, as the"
        " epoch needs it (-data: the folder of shards.json) (new)",
    ),
    (
        "fetchTimeout",
        bounded_int,
        600,
        "Tar shards fetched by -shardSource: seconds one shard's fetch may take (new)",
    ),
    (
        "preciseBN",
        bounded_int,
        0,
        "Before each test pass, recompute BatchNorm statistics on N training images (new)",
    ),
]


# -h's headings, the docs' groups; in each, the Lua's flags come first (the FLAGS order).
SECTIONS = {
    "data": ("data", "dataset", "gen", "nThreads", "tenCrop", "cropSize", "trainCrop",
             "valResize", "valCrop", "valInterpolation", "decodeOnDevice", "skipCorrupt",
             "imageColumn", "labelColumn", "shuffleBuffer", "shardSource", "fetchTimeout"),
    "network": ("netType", "bottleneckType", "depth", "baseWidth", "cardinality", "radix", "se",
                "widenFactor", "dropout", "shortcutType", "nClasses", "zeroInitResidual"),
    "training": ("manualSeed", "nEpochs", "epochNumber", "batchSize", "testOnly", "LR",
                 "optimizer", "momentum", "nesterov", "weightDecay", "normWeightDecay",
                 "biasWeightDecay", "lrSchedule", "lrSteps", "lrGamma", "lrMin", "warmupEpochs",
                 "warmupStart", "accumSteps", "clipGradNorm", "printFreq", "preciseBN"),
    "recipe": ("recipe", "config", "dropPath", "headDropout", "labelSmoothing", "loss",
               "bceTargetThreshold", "mixup", "cutmix", "ema", "emaEvery", "autoAugment",
               "randomErasing", "erasingStyle", "erasingArea", "erasingAspect", "repeatedAug"),
    "checkpoints and fine-tuning": ("save", "resume", "retrain", "optimState", "resetClassifier",
                                    "weights", "frozenStages", "normEval", "checkpointEvery",
                                    "keepCheckpoints", "overwrite", "tensorboard", "logger"),
    "devices and launch": ("nGPU", "backend", "cudnn", "precision", "shareGradInput", "optnet",
                           "device", "memoryFormat", "hostAllocator", "compile", "syncBN",
                           "rendezvousTimeout", "requeueSignal", "maxRequeues"),
}  # fmt: skip


def help_order() -> list[tuple[str, list[tuple]]]:
    """-h's sections with their flags (FLAGS entries): the Lua's first, then the new ones."""
    by_name = {entry[0]: entry for entry in FLAGS}
    lua_first = lambda entry: "(new)" in entry[3]  # noqa: E731 - a sort key
    return [
        (title, sorted((by_name[name] for name in names), key=lua_first))
        for title, names in SECTIONS.items()
    ]


def build_parser(names: Names) -> Parser:
    """The parser: each flag as -name and --name, booleans also as a bare flag; the help of
    the flags that take names lists them."""
    listed = {
        f"{{{field}}}": " | ".join(getattr(names, field))
        for field in (
            "datasets",
            "net_types",
            "policies",
            "schedules",
            "losses",
            "optimizers",
            "devices",
            "memory_formats",
        )
    }
    parser = Parser(
        prog="main.py",
        description="Train ResNet / PreResNet / ResNeXt on ImageNet, CIFAR or an image folder.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for title, entries in help_order():
        group = parser.add_argument_group(title)
        for name, kind, default, text in entries:
            for placeholder, words in listed.items():
                text = text.replace(placeholder, words)
            extra = {"nargs": "?", "const": True, "metavar": "true|false"}
            extra = extra if kind is lua_bool else {}
            group.add_argument(
                f"-{name}", f"--{name}", dest=name, type=kind, default=default, help=text, **extra
            )
    return parser


def parse(argv: Sequence[str] | None, names: Names) -> argparse.Namespace:
    """Parse and validate argv against the modules' names; raise UsageError naming what to
    fix. opts.given lists the flags the command line set (the rest are defaults)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        given = given_flags(argv)
        path = flag_value(argv, "config") if "config" in given else None
        file = read_config(path) if path else {}
        config = config_flags(file, path, given)
        opts = build_parser(names).parse_args([*config_argv(config), *argv])
        opts.given, opts.configured = [*given, *config], list(config)
        opts.configFile = file or None  # recorded whole in opts.json
        apply_recipe(opts)
        resolve_defaults(opts, names)
        validate(opts, names)
    except UsageError as exc:  # a value typed may hold a line break: the message stays one line
        raise UsageError(str(exc).replace("\r", "\\r").replace("\n", "\\n")) from None
    return opts


def given_flags(argv: Sequence[str]) -> list[str]:
    """The flag names in argv, each spelled out in full and given once. (argparse matches
    single-dash prefixes even with allow_abbrev=False, and keeps the last of repeats.)"""
    known = {name for name, *_ in FLAGS}
    seen = []
    for token in argv:
        if not (token.startswith("-") and len(token) > 1 and not token[1].isdigit()):
            continue  # a value (negative numbers included)
        name = token.split("=", 1)[0].lstrip("-")
        if name in ("h", "help"):
            continue
        if name not in known:
            raise UsageError(
                f"unknown flag {token.split('=', 1)[0]}{closest(name, known, '-')} (see -h)"
            )
        if name in seen:
            raise UsageError(f"-{name} is given twice; give it once")
        seen.append(name)
    return seen


def flag_value(argv: Sequence[str], name: str) -> str:
    """The value argv gives -name (as -name V, --name V or -name=V)."""
    for index, token in enumerate(argv):
        flag, equals, value = token.partition("=")
        if flag.lstrip("-") == name and flag.startswith("-"):
            if equals:
                return value
            _check(index + 1 < len(argv), f"-{name} needs a value")
            return argv[index + 1]
    raise UsageError(f"-{name} needs a value")


# Flags a -config file does not set, taken from the command line only: where a run reads and
# writes, and commands. A file from someone else must not choose them (a -save with -overwrite
# deletes a run's files, -shardSource may run a shell command).
COMMAND_LINE_ONLY = ("config", "data", "gen", "save", "resume", "overwrite", "retrain",
                     "optimState", "shardSource")  # fmt: skip
RECORD_KEYS = ("arch", "configFile")  # what a run's opts.json holds besides its flags
CONFIG_BYTES = 1 << 20


def config_flags(values: Mapping, path: str | None, given: Sequence[str]) -> dict:
    """The flags a -config file (its values, read from path) sets that the command line does
    not: its values by flag name, less those it leaves unset (null) and the command line's."""
    known = {name for name, *_ in FLAGS}
    unknown = [str(key) for key in values if key not in known and key not in RECORD_KEYS]
    _check(not unknown, f"-config {path}: unknown flags {', '.join(unknown[:10])} (see -h)")
    skipped = (*COMMAND_LINE_ONLY, *RECORD_KEYS, *given)
    taken = {k: v for k, v in values.items() if k not in skipped and v is not None}
    for key, value in taken.items():
        _check(
            isinstance(value, (str, int, float, list)),
            f"-config {path}: -{key} must be a number, a string, true/false or a list",
        )
    return taken


def read_config(path: str) -> dict:
    """A -config file's mapping: JSON, or YAML (.yaml / .yml, with PyYAML), read safely."""
    try:
        size = os.path.getsize(path)
        _check(
            size <= CONFIG_BYTES, f"-config {path} is {size} bytes: a flags file is at most 1 MiB"
        )
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"-config {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # optional: only YAML needs it
        except ImportError:
            raise UsageError(f"-config {path} is YAML: pip install pyyaml, or give JSON") from None
        load, error = yaml.safe_load, yaml.YAMLError
    else:
        load, error = json.loads, json.JSONDecodeError
    try:
        values = load(text)
    except error as exc:
        raise UsageError(f"-config {path} is not valid: {str(exc).splitlines()[0]}") from None
    _check(isinstance(values, dict), f"-config {path} must hold flag names and their values")
    return values


def config_argv(config: Mapping) -> list[str]:
    """A -config file's flags as command-line words (lists comma-separated, floats exact)."""

    def text(value) -> str:
        return repr(value) if isinstance(value, float) else flag_text(value)

    words = []
    for name, value in config.items():  # -name=value: a value may start with '-'
        written = ",".join(map(text, value)) if isinstance(value, list) else text(value)
        words.append(f"-{name}={written}")
    return words


def recipe_values(name: str, dataset: str) -> dict:
    """The flag values -recipe name sets for this dataset ({} for none)."""
    if name == "none":
        return {}
    check_choice("-recipe", name, ("none", *RECIPES))
    kind = "folder" if dataset == "imagenet" else "small"  # -dataset imagenet: any folder
    if name != "none" and not {"all", kind} & set(RECIPES[name]):
        wanted = "folder (-dataset imagenet)" if kind == "small" else "small-image"
        raise UsageError(f"-recipe {name} is for {wanted} datasets, not -dataset {dataset}")
    return {**RECIPES[name].get("all", {}), **RECIPES[name].get(kind, {})}


def apply_recipe(opts: argparse.Namespace) -> None:
    """Set -recipe's values on the flags that the command line did not give."""
    for name, value in recipe_values(opts.recipe, opts.dataset).items():
        if name not in opts.given:
            setattr(opts, name, value)


def flag_text(value) -> str:
    """A flag's value as typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_summary(opts: argparse.Namespace) -> str | None:
    """One line saying what -recipe set and which of its flags the command line overrode."""
    values = recipe_values(opts.recipe, opts.dataset)
    if not values:
        return None
    used = " ".join(f"-{k} {flag_text(getattr(opts, k))}" for k in values if k not in opts.given)
    configured = getattr(opts, "configured", ())
    typed = [f"-{k}" for k in values if k in opts.given and k not in configured]
    filed = [f"-{k}" for k in values if k in configured]
    line = f"=> -recipe {opts.recipe}: {used}".rstrip()
    line += f" (given on the command line: {' '.join(typed)})" if typed else ""
    return line + (f" (given by -config: {' '.join(filed)})" if filed else "")


def config_note(opts: argparse.Namespace) -> str | None:
    """What -config set, and which of its values were not taken (COMMAND_LINE_ONLY)."""
    if not getattr(opts, "configFile", None):
        return None
    kept = [k for k in COMMAND_LINE_ONLY if k != "config"]  # (a file names no -config)
    left = [f"-{k} {flag_text(v)}" for k, v in opts.configFile.items()
            if k in kept and v not in (None, getattr(opts, k))]  # fmt: skip
    line = f"=> -config {opts.config}: {len(opts.configured)} flags"
    return line + (f"; not taken from a file: {', '.join(left)}" if left else "")


def set_by_user(opts: argparse.Namespace, name: str) -> bool:
    """Whether the command line gave the flag, or -config gave it a value not its default
    (a run's opts.json lists every flag)."""
    if name not in getattr(opts, "given", ()):
        return False
    default = next(default for flag, _, default, _ in FLAGS if flag == name)
    return name not in getattr(opts, "configured", ()) or getattr(opts, name) != default


# What -testOnly leaves aside: each acts on training alone.
TRAINING_ONLY = (
    "mixup",
    "cutmix",
    "labelSmoothing",
    "dropPath",
    "headDropout",
    "optimizer",
    "loss",
    "bceTargetThreshold",
    "repeatedAug",
    "randomErasing",
    "erasingStyle",
    "erasingArea",
    "erasingAspect",
    "autoAugment",
    "clipGradNorm",
    "accumSteps",
    "trainCrop",
    "warmupEpochs",
    "emaEvery",
    "logger",  # a test is not a run a tracker follows
)


def test_only_note(options: Mapping, averaged: bool) -> str | None:
    """The warning a -testOnly run gives for the training options it was given (by a
    recipe too), and for -ema when the model tested keeps no average (averaged: it does);
    None when there are none. options: the flags' values by name."""
    defaults = {name: default for name, _, default, _ in FLAGS}
    ignored = [
        f"-{name} {flag_text(options[name])}"
        for name in TRAINING_ONLY
        if options[name] != defaults[name]
    ]
    if options["ema"] and not averaged:
        ema = options["ema"]
        ignored.append(f"-ema {ema:g} (the model keeps no average: its weights are tested)")
    if not ignored:
        return None
    return f"=> warning: -testOnly ignores what acts on training alone: {', '.join(ignored)}"


def resolve_defaults(opts: argparse.Namespace, names: Names) -> None:
    """Fill the per-dataset defaults as opts.lua does, and an unset depth."""
    if opts.nEpochs == 0 and opts.dataset in names.datasets:
        opts.nEpochs = names.datasets[opts.dataset]
    if opts.depth is None and opts.netType in names.net_types:
        opts.depth = names.default_depth(opts.netType, opts.dataset)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def validate(opts: argparse.Namespace, names: Names) -> None:
    """Reject bad values and combinations before any work starts."""
    for name, kind, default, _ in FLAGS:  # '' would name the current folder, or nothing
        checked = default != "" or (name == "data" and name in getattr(opts, "given", ()))
        _check(
            kind is not str or not checked or getattr(opts, name).strip() != "",
            f"-{name} is empty: give a value (or leave the flag out for its default)",
        )
    check_choice("-dataset", opts.dataset, names.datasets)
    check_choice("-netType", opts.netType, names.net_types)
    check_choice("-precision", opts.precision, PRECISIONS)
    check_choice("-memoryFormat", opts.memoryFormat, names.memory_formats)
    check_choice("-device", opts.device, names.devices)
    check_choice("-cudnn", opts.cudnn, ("fastest", "default", "deterministic"))
    check_choice("-hostAllocator", opts.hostAllocator, ("cache", "system"))
    _check(opts.batchSize > 0, f"-batchSize must be positive, got {opts.batchSize}")
    _check(opts.nEpochs > 0, f"-nEpochs must be positive, got {opts.nEpochs}")
    _check(opts.epochNumber > 0, f"-epochNumber must be positive, got {opts.epochNumber}")
    _check(opts.LR > 0, f"-LR must be positive, got {opts.LR}")
    _check(0 <= opts.momentum < 1, f"-momentum must be in [0, 1), got {opts.momentum}")
    _check(opts.weightDecay >= 0, f"-weightDecay must not be negative, got {opts.weightDecay}")
    validate_recipe_options(opts, names)
    _check(opts.nThreads >= 0, f"-nThreads must not be negative, got {opts.nThreads}")
    workers = WORKERS_PER_CORE * (os.cpu_count() or 1)
    _check(
        opts.nThreads <= workers,
        f"-nThreads {opts.nThreads} is more loader processes than this machine can use"
        f" ({os.cpu_count()} cores: at most {workers})",
    )
    _check(
        opts.testOnly or opts.epochNumber <= opts.nEpochs,
        f"-epochNumber {opts.epochNumber} is beyond -nEpochs {opts.nEpochs}: nothing to train",
    )
    validate_run_options(opts)
    validate_weights(opts, names.is_weights_name)
    validate_paths(opts)


def validate_run_options(opts: argparse.Namespace) -> None:
    """The devices, the images' sizes and crops, the storage, printing and the run's files."""
    _check(opts.nGPU >= 0, f"-nGPU must not be negative, got {opts.nGPU}")
    _check(
        not opts.decodeOnDevice or opts.dataset == "imagenet",
        "-decodeOnDevice is for folder datasets (-dataset imagenet)",
    )
    _check(
        opts.cropSize == 224 or opts.dataset == "imagenet",
        "-cropSize is for folder datasets (-dataset imagenet)",
    )
    _check(opts.cropSize >= 32, f"-cropSize must be at least 32, got {opts.cropSize}")
    validate_crops(opts)
    validate_storage(opts)
    _check(
        opts.printFreq == "auto" or opts.printFreq > 0,
        f"-printFreq must be auto or positive, got {opts.printFreq}",
    )
    _check(
        opts.rendezvousTimeout > 0,
        f"-rendezvousTimeout must be positive, got {opts.rendezvousTimeout}",
    )
    for name in ("nClasses", "checkpointEvery", "keepCheckpoints", "preciseBN", "maxRequeues"):
        value = getattr(opts, name)
        _check(value >= 0, f"-{name} must not be negative, got {value}")
    _check(not (opts.shareGradInput and opts.optnet), "cannot use both -shareGradInput and -optnet")
    _check(
        not opts.tenCrop or opts.batchSize >= 10,
        f"-tenCrop true needs -batchSize of at least 10 (10 crops per image), got {opts.batchSize}",
    )
    _check(
        not opts.tenCrop or opts.dataset == "imagenet",
        "-tenCrop is for ImageNet-style folder datasets, not " + opts.dataset,
    )


def validate_weights(opts: argparse.Namespace, is_weights_name: Callable[[str], bool]) -> None:
    """-weights: a name (for folder datasets) or a file here; not with -retrain."""
    if opts.weights == "none":
        return
    _check(opts.retrain == "none", "give -weights or -retrain, not both")
    if os.path.exists(opts.weights):  # a model file or an export: its network says its data set
        return
    _check(
        is_weights_name(opts.weights),
        f"-weights takes a name such as ResNet50_Weights.IMAGENET1K_V2 or timm/resnest50d.in1k,"
        f" or an exported file or folder, not {opts.weights} (no such file)",
    )
    _check(
        opts.dataset == "imagenet",
        "-weights are ImageNet networks: use -dataset imagenet with a class-per-folder -data",
    )


STORAGE_FLAGS = ("shardSource", "imageColumn", "labelColumn", "shuffleBuffer", "fetchTimeout")


def validate_storage(opts: argparse.Namespace) -> None:
    """The flags of data stored as tar shards or Hugging Face files are for -dataset imagenet
    (whose -data they describe); elsewhere they would do nothing."""
    defaults = {name: default for name, _, default, _ in FLAGS if name in STORAGE_FLAGS}
    for name, default in defaults.items():
        _check(
            opts.dataset == "imagenet" or getattr(opts, name) == default,
            f"-{name} is for -dataset imagenet data (tar shards, Hugging Face files);"
            f" -dataset {opts.dataset} reads its own files: drop -{name}",
        )
    _check(
        opts.shardSource or opts.fetchTimeout == defaults["fetchTimeout"],
        "-fetchTimeout is for shards fetched by -shardSource: drop it, or give -shardSource",
    )


def validate_crops(opts: argparse.Namespace) -> None:
    """-trainCrop, -valResize and -valCrop: folder datasets, at least 32, resize >= crop."""
    for name in ("trainCrop", "valResize", "valCrop"):
        value = getattr(opts, name)
        _check(
            value == 0 or opts.dataset == "imagenet",
            f"-{name} is for folder datasets (-dataset imagenet)",
        )
        _check(value == 0 or value >= 32, f"-{name} must be at least 32 (0: unset), got {value}")
    _check(
        opts.valInterpolation == "bicubic" or opts.dataset == "imagenet",
        "-valInterpolation is for folder datasets (-dataset imagenet)",
    )
    check_choice("-valInterpolation", opts.valInterpolation, INTERPOLATIONS)
    val_crop = opts.valCrop or opts.cropSize
    _check(
        opts.valResize == 0 or opts.valResize >= val_crop,
        f"-valResize {opts.valResize} is smaller than the val crop {val_crop}",
    )


def validate_recipe_options(opts: argparse.Namespace, names: Names) -> None:
    """The schedule, loss and optimizer options beyond the Lua's."""
    check_choice("-lrSchedule", opts.lrSchedule, names.schedules)
    _check(
        opts.lrSchedule != "step" or opts.lrSteps,
        "-lrSchedule step needs -lrSteps, the epochs the LR drops at (e.g. -lrSteps 30,60,90)",
    )
    _check(
        not opts.lrSteps or opts.lrSchedule == "step",
        f"-lrSteps is for -lrSchedule step (this run's is {opts.lrSchedule})",
    )
    _check(0 < opts.lrGamma <= 1, f"-lrGamma must be in (0, 1], got {opts.lrGamma}")
    _check(0 <= opts.lrMin < opts.LR, f"-lrMin must be in [0, -LR), got {opts.lrMin}")
    _check(opts.warmupEpochs >= 0, f"-warmupEpochs must not be negative, got {opts.warmupEpochs}")
    from_recipe = opts.recipe != "none" and "warmupEpochs" not in getattr(opts, "given", ())
    source = f" (-recipe {opts.recipe}'s)" if from_recipe else ""
    _check(
        opts.testOnly or opts.warmupEpochs < opts.nEpochs,
        f"-warmupEpochs {opts.warmupEpochs:g}{source} must be shorter than the run (-nEpochs"
        f" {opts.nEpochs}); give a shorter -warmupEpochs",
    )
    _check(0 < opts.warmupStart <= 1, f"-warmupStart must be in (0, 1], got {opts.warmupStart}")
    _check(
        0 <= opts.labelSmoothing < 1,
        f"-labelSmoothing must be in [0, 1), got {opts.labelSmoothing}",
    )
    validate_loss(opts, names)
    for name in ("dropPath", "headDropout"):
        value = getattr(opts, name)
        _check(0 <= value < 1, f"-{name} must be in [0, 1), got {value}")
    validate_optimizer(opts, names)
    _check(opts.clipGradNorm >= 0, f"-clipGradNorm must not be negative, got {opts.clipGradNorm}")
    _check(
        1 <= opts.accumSteps <= opts.batchSize,
        f"-accumSteps must be from 1 to -batchSize ({opts.batchSize}), got {opts.accumSteps}",
    )
    for name in ("mixup", "cutmix"):
        value = getattr(opts, name)
        _check(value >= 0, f"-{name} (alpha) must not be negative, got {value}")
    check_choice("-autoAugment", opts.autoAugment, names.policies)
    validate_erasing(opts)
    _check(0 <= opts.ema < 1, f"-ema (the decay) must be in (0, 1), or 0 for none; got {opts.ema}")
    _check(opts.repeatedAug >= 1, f"-repeatedAug must be at least 1, got {opts.repeatedAug}")
    _check(opts.shuffleBuffer >= 1, f"-shuffleBuffer must be at least 1, got {opts.shuffleBuffer}")
    _check(
        not opts.shardSource or "{shard}" in opts.shardSource,
        f"-shardSource {opts.shardSource!r} must say where each shard is with {{shard}}"
        " (e.g. 'pipe:curl -sf https://host/shards/{shard}')",
    )
    _check(opts.fetchTimeout >= 1, f"-fetchTimeout must be at least 1 s, got {opts.fetchTimeout}")
    _check(opts.emaEvery > 0, f"-emaEvery must be positive, got {opts.emaEvery}")
    for name in ("normWeightDecay", "biasWeightDecay"):
        value = getattr(opts, name)
        _check(value is None or value >= 0, f"-{name} must not be negative, got {value}")


# The optimizers each optimizer flag applies to.
OPTIMIZER_FLAGS = {"momentum": ("sgd", "rmsprop", "lars"), "nesterov": ("sgd", "lars")}


def validate_optimizer(opts: argparse.Namespace, names: Names) -> None:
    """-optimizer, and -momentum / -nesterov given only where they act."""
    check_choice("-optimizer", opts.optimizer, names.optimizers)
    for flag, takers in OPTIMIZER_FLAGS.items():
        _check(
            not set_by_user(opts, flag) or opts.optimizer in takers,
            f"-{flag} is for -optimizer {', '.join(takers)} (this run's is {opts.optimizer}):"
            f" drop -{flag}",
        )


def validate_loss(opts: argparse.Namespace, names: Names) -> None:
    """-loss, and -bceTargetThreshold for -loss bce alone."""
    check_choice("-loss", opts.loss, names.losses)
    threshold = opts.bceTargetThreshold
    _check(0 <= threshold < 1, f"-bceTargetThreshold must be in [0, 1), got {threshold}")
    _check(
        threshold == 0 or opts.loss == "bce",
        f"-bceTargetThreshold is for -loss bce (this run's is {opts.loss}): drop it, or add"
        " -loss bce",
    )


def validate_erasing(opts: argparse.Namespace) -> None:
    """-randomErasing's probability, style and box."""
    _check(
        0 <= opts.randomErasing <= 1,
        f"-randomErasing must be in [0, 1], got {opts.randomErasing}",
    )
    check_choice("-erasingStyle", opts.erasingStyle, ("torchvision", "paper", "authors"))
    if opts.erasingArea:
        _check(
            opts.erasingArea[1] < 1,
            f"-erasingArea's largest share must be below 1 (a box inside the image), got"
            f" {opts.erasingArea[1]:g}",
        )


def validate_paths(opts: argparse.Namespace) -> None:
    """The data folder and the files named by -resume / -retrain / -optimState must exist
    (a folder is not a file)."""
    if opts.dataset == "imagenet":
        _check(
            opts.data != "", "missing ImageNet data directory: give -data DIR with train/ and val/"
        )
        _check(os.path.isdir(opts.data), f"missing ImageNet data directory: {opts.data}")
        # What the folder holds (class folders, shards, parquet) is the dataset's to check.
    elif opts.data:
        _check(os.path.isdir(opts.data), f"data directory not found: {opts.data}")
    validate_files(opts)


def validate_files(opts: argparse.Namespace) -> None:
    """The folder of -resume (unless it is -save's, which a first run creates: a job that
    restarts runs one command) and the files of -retrain / -optimState must exist."""
    if opts.resume != "none":
        own = os.path.realpath(opts.resume) == os.path.realpath(opts.save)
        _check(own or os.path.isdir(opts.resume), f"-resume directory not found: {opts.resume}")
    for flag in ("retrain", "optimState"):
        path = getattr(opts, flag)
        _check(not os.path.isdir(path), f"-{flag} {path} is a directory: give the file in it")
        _check(path == "none" or os.path.isfile(path), f"-{flag} file not found: {path}")


def start_notes(opts: argparse.Namespace) -> tuple[str, ...]:
    """The lines a run starts with about its command line: what -recipe set, and the linear
    scaling rule's -LR for a changed -batchSize."""
    notes = (
        config_note(opts),
        recipe_summary(opts),
        linear_scaling_note(opts),
        accumulation_note(opts),
    )
    return tuple(note for note in notes if note)


def accumulation_note(opts: argparse.Namespace) -> str | None:
    """-accumSteps: the micro-batch each step is computed in."""
    if opts.accumSteps == 1 or opts.testOnly:
        return None
    micro = math.ceil(opts.batchSize / opts.accumSteps)
    return (
        f"=> -accumSteps {opts.accumSteps}: each step of -batchSize {opts.batchSize} (the"
        f" global batch, the LR's) is {opts.accumSteps} micro-batches of {micro} images at"
        " most (BatchNorm sees the micro-batch)"
    )


REFERENCE_BATCH = {"imagenet": 256}  # the recipes' batch for -LR 0.1; CIFAR's is 128


def linear_scaling_note(opts) -> str | None:
    """What -LR the linear scaling rule gives when the user changed -batchSize to another
    than the recipe's (-recipe's, else the Lua's) and left -LR at the recipe's; else None."""
    given = getattr(opts, "given", ())
    if opts.testOnly or "batchSize" not in given or "LR" in given:
        return None
    recipe = recipe_values(opts.recipe, opts.dataset)
    reference = recipe.get("batchSize", REFERENCE_BATCH.get(opts.dataset, 128))
    base = recipe.get("LR", 0.1)
    suggested = base * opts.batchSize / reference
    if opts.batchSize == reference or math.isclose(opts.LR, suggested):
        return None
    return (
        f"=> Note: -batchSize {opts.batchSize} is not the recipe's {reference}; the linear"
        f" scaling rule suggests -LR {suggested:g} ({base:g} x {opts.batchSize}/{reference})"
    )
