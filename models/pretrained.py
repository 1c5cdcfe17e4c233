"""Published weights by name, as torchvision's and timm's users name them.

`resolve("ResNet50_Weights.IMAGENET1K_V2")` or `resolve("timm/resnest50d.in1k")` says, without
the network, which of this tool's networks the weights fit, their classes and the preprocessing
they were evaluated with; `fetch(named)` gives them as a model record of this tool (the
`-retrain` file format), through the libraries' own caches: torch.hub's (TORCH_HOME) for
torchvision, the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE) for timm. A cached file is read
without the network. timm is needed only for timm's names.
"""

import dataclasses
import math
import os
from typing import NamedTuple

import torch
import torchvision.models

from checkpoints import ModelFile, load_model_file
from datasets.folder_samples import LUA_CROPS, MEANSTD
from errors import UsageError
from models import arch_flags, complete_arch, create, full_arch
from models.convert import arch_of_torchvision, from_timm
from models.loading import weights_difference

# The torchvision builders whose networks this tool builds (the ResNet family).
TORCHVISION_BUILDERS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip
TIMM_PREFIX = "timm/"


class WeightsUnavailable(UsageError):
    """Named weights that cannot be read: not cached and not downloadable."""


class Preprocessing(NamedTuple):
    """How the weights' published accuracy was measured: the short side resized to `resize`,
    a centre crop of `crop`, that interpolation, that mean and std."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple = MEANSTD[0]  # the ImageNet ones this tool normalises with
    std: tuple = MEANSTD[1]


class Named(NamedTuple):
    """Weights resolved from their name, not yet read (a local file: read once, kept)."""

    name: str  # as the library spells it (DEFAULT resolved)
    library: str  # "torchvision", "timm", or "file" (a path here)
    arch: dict  # every create() argument of this tool's network
    preprocessing: Preprocessing
    url: str  # where the library downloads the file from
    cache: str  # the folder the library keeps it in
    published: tuple[float, float] | None = None  # ImageNet-1k top-1, top-5 error (%)
    record: ModelFile | None = None  # a local file's content, read to resolve it


def is_weights_name(text: str) -> bool:
    """Whether text is spelt as a weights name (not a file): X_Weights.Y or timm/..."""
    return text.startswith(TIMM_PREFIX) or "_Weights." in text


def resolve(name: str) -> Named:
    """The weights called name (or in the file or Hub folder of that path); ValueError
    naming the valid names when there are none."""
    if is_local(name):
        return resolve_file(name)
    if name.startswith(TIMM_PREFIX):
        return resolve_timm(name)
    return resolve_torchvision(name)


def is_local(name: str) -> bool:
    """Whether -weights names a file or folder here (not published weights)."""
    return os.path.exists(name)


def resolve_file(path: str) -> Named:
    """Weights in a file that says what network they are: a model file of this tool, a
    safetensors file or Hub folder of scripts/export.py."""
    record = load_model_file(path)
    if not record.arch:
        raise UsageError(
            f"-weights {path} does not say which network it is (a bare state_dict): give it to"
            " -retrain with the network's flags"
        )
    sizes = record.evaluation or {}
    preprocessing = Preprocessing(
        sizes.get("resize", LUA_CROPS.val_resize),
        sizes.get("crop", LUA_CROPS.val),
        sizes.get("interpolation", LUA_CROPS.val_interpolation),
    )
    arch = full_arch({**complete_arch(record.arch, record.path), "nClasses": record.outputs()})
    folder = os.path.dirname(os.path.abspath(path))
    return Named(path, "file", arch, preprocessing, path, folder, record=record)


def torchvision_weights(name: str):
    """torchvision's WeightsEnum member called name, and its builder's name."""
    enum_name, _, member = name.partition(".")
    for builder in TORCHVISION_BUILDERS:
        enum = torchvision.models.get_model_weights(builder)
        if enum.__name__ == enum_name:
            if member not in enum.__members__:
                valid = ", ".join([*enum.__members__])
                raise UsageError(f"-weights {name}: {enum_name} has {valid}")
            return enum[member], builder
    enums = [torchvision.models.get_model_weights(b).__name__ for b in TORCHVISION_BUILDERS]
    valid = ", ".join(enums)
    raise UsageError(
        f"-weights {name}: not weights of a network this tool builds; torchvision's are"
        f" {valid} (e.g. ResNet50_Weights.IMAGENET1K_V2), timm's timm/<model>.<tag>"
    )


def resolve_torchvision(name: str) -> Named:
    """torchvision's weights called name (e.g. ResNet50_Weights.IMAGENET1K_V2 or .DEFAULT)."""
    weights, builder = torchvision_weights(name)
    with torch.device("meta"):  # only the shapes, to read the architecture from
        shapes = torchvision.models.get_model(builder).state_dict()
    given = weights.transforms()  # torchvision's evaluation transform of these weights
    sizes = (given.resize_size[0], given.crop_size[0], given.interpolation.value)
    preprocessing = Preprocessing(*sizes, tuple(given.mean), tuple(given.std))
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    accuracy = weights.meta["_metrics"]["ImageNet-1K"]
    published = (round(100 - accuracy["acc@1"], 3), round(100 - accuracy["acc@5"], 3))
    return Named(
        str(weights),
        "torchvision",
        full_arch(arch_of_torchvision(shapes)),
        preprocessing,
        weights.url,
        cache,
        published,
    )


def import_timm():
    """timm, or the one-line error saying to install it."""
    try:
        import timm
    except ImportError:
        raise UsageError("timm's weights need the timm package: pip install timm") from None
    return timm


def resolve_timm(name: str) -> Named:
    """timm's weights called timm/<model>.<tag> (its Hugging Face hub name)."""
    timm = import_timm()
    model_name = name.removeprefix(TIMM_PREFIX)
    config = timm.models.get_pretrained_cfg(model_name)
    if config is None or config.hf_hub_id != name:
        meant = f"; its default tag is -weights {config.hf_hub_id}" if config else ""
        raise UsageError(
            f"-weights {name}: timm has no weights of that name (see timm.list_pretrained()){meant}"
        )
    with torch.device("meta"):
        shapes = timm.create_model(model_name).state_dict()
    arch = fitting_arch(name, shapes)
    if (config.mean, config.std) != MEANSTD:
        raise UsageError(
            f"-weights {name}: normalised with mean {config.mean} std {config.std};"
            " this tool normalises with ImageNet's"
        )
    crop = (config.test_input_size or config.input_size)[-1]
    resize = math.floor(crop / (config.test_crop_pct or config.crop_pct))
    preprocessing = Preprocessing(resize, crop, config.interpolation)
    from huggingface_hub import constants

    return Named(
        name, "timm", arch, preprocessing, f"https://huggingface.co/{name}", constants.HF_HUB_CACHE
    )


def fitting_arch(name: str, shapes: dict) -> dict:
    """The create() arguments of this tool's network with exactly the names and shapes of a
    timm state_dict; ValueError when there is none."""
    refusal = (
        f"-weights {name}: not a network this tool builds (ResNet, ResNeXt, SE-, ResNeSt, SENet)"
    )
    try:
        arch = arch_of_torchvision(shapes)
    except (ValueError, KeyError):
        raise UsageError(refusal) from None
    with torch.device("meta"):
        ours = create(**arch).state_dict()
    converted = from_timm(shapes)
    if ours.keys() != converted.keys() or any(ours[k].shape != converted[k].shape for k in ours):
        raise UsageError(refusal)
    return full_arch(arch)


def fetch(named: Named, progress: bool = True) -> ModelFile:
    """The weights as a model file (weights, arch, classes, evaluation), from the library's
    cache, downloading them there first when they are not; WeightsUnavailable says what to
    fetch and where to put it."""
    if named.library == "file":  # read when resolved: not a second time
        return dataclasses.replace(named.record, fetched=True)
    if named.library == "torchvision":
        state_dict, classes = torchvision_state_dict(named, progress)
    else:
        state_dict, classes = timm_state_dict(named)
    resize, crop, interpolation = named.preprocessing[:3]
    evaluation = {"resize": resize, "crop": crop, "interpolation": interpolation}
    return ModelFile(
        from_timm(state_dict),
        named.name,
        dict(named.arch),
        classes,
        evaluation=evaluation,
        fetched=True,
    )


def torchvision_state_dict(named: Named, progress: bool) -> tuple[dict, list[str]]:
    """torchvision's weights through torch.hub's cache, and their class names."""
    weights, _ = torchvision_weights(named.name)
    file = os.path.basename(named.url)
    path = os.path.join(named.cache, file)
    cached, created = os.path.exists(path), missing_folders(named.cache)
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            named.url, progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as exc:
        for folder in created:  # leave no empty cache folders behind
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        if cached:  # read, not downloaded: a damaged or foreign file
            raise WeightsUnavailable(
                f"cannot read {path} ({named.name}): delete it to download it again, or put"
                f" the file from {named.url} there"
            ) from None
        if not isinstance(exc, OSError):  # not a download's failure
            raise
        raise WeightsUnavailable(
            f"cannot download {file} for {named.name} ({reason(exc)}): fetch {named.url} and"
            f" put it in {named.cache}/ (torch.hub's cache; TORCH_HOME moves it)"
        ) from None
    check_tensors(named, state_dict, path)
    return state_dict, list(weights.meta["categories"])


def check_tensors(named: Named, state_dict: dict, path: str) -> None:
    """The file read for named weights holds their network's tensors (torch.hub checks a
    file's hash only when it downloads it), else WeightsUnavailable saying what to do."""
    with torch.device("meta"):
        expected = create(**named.arch).state_dict()
    difference = weights_difference(expected, from_timm(state_dict))
    if difference is not None:
        raise WeightsUnavailable(
            f"the cached file {path} does not hold the tensors of {named.name} ({difference}):"
            f" delete it to download it again, or put the file from {named.url} there"
        )


def missing_folders(folder: str) -> list[str]:
    """folder and those of its parents that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words."""
    return " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]


def timm_state_dict(named: Named) -> tuple[dict, list[str]]:
    """timm's weights through the Hugging Face cache, and their class names."""
    timm = import_timm()
    folder = f"models--{named.name.replace('/', '--')}"
    try:
        model = timm.create_model(named.name.removeprefix(TIMM_PREFIX), pretrained=True)
    except OSError as exc:  # not cached, and offline or no network
        raise WeightsUnavailable(
            f"cannot fetch {named.name}: not in the Hugging Face cache {named.cache} and not"
            f" downloadable ({reason(exc)[:80]}); on a machine with network run `hf download"
            f" {named.name}` and copy its {folder} folder into {named.cache}/ (HF_HOME moves it)"
        ) from None
    except Exception as exc:  # found in the cache but unreadable
        raise WeightsUnavailable(
            f"cannot read the cached {named.name} ({reason(exc)[:80]}): delete"
            f" {os.path.join(named.cache, folder)} to download it again"
        ) from None
    subset = timm.data.infer_imagenet_subset(model) or "imagenet-1k"
    names = timm.data.ImageNetInfo(subset).label_descriptions()
    return model.state_dict(), [description.split(",")[0] for description in names]


def summary(named: Named) -> str:
    """What -weights brings: the network, its classes, its evaluation sizes when they are
    not the Lua's."""
    line = f"=> Weights {named.name} ({named.library}): {arch_flags(named.arch)}"
    outputs = named.arch["nClasses"]
    line += f", {outputs} classes" + " (ImageNet-1k's)" * (outputs == 1000)
    sizes = named.preprocessing
    lua = LUA_CROPS
    if sizes[:3] != (lua.val_resize, lua.val, lua.val_interpolation):
        line += (
            f"; evaluated at resize {sizes.resize} ({sizes.interpolation}), crop"
            f" {sizes.crop}: -valResize, -valCrop and -valInterpolation default to those"
            " unless -cropSize is given"
        )
    if named.published:
        top1, top5 = named.published
        line += f"; published ImageNet-1k error top1 {top1:g}  top5 {top5:g}"
    return line
