"""What classify.py and extract_features.py share: a model file as an evaluating network
with its class names, and the Lua's test-time transform of an image file."""

import os
import re
import sys
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoints  # noqa: E402 - after the repository root is on the path
import datasets  # noqa: E402
import models  # noqa: E402
from datasets import (  # noqa: E402
    cifar,
    decoding,
    fashionmnist,
    folder_index,
    folder_samples,
    imagenet,
    photometric,
    table,
)
from models import convert, pretrained  # noqa: E402
from models.loading import load_weights  # noqa: E402
from runtime import devices  # noqa: E402

WNID = re.compile(r"n\d{8}")


def imagenet_names(classes: list[str] | None, n_outputs: int) -> list[str]:
    """Readable names: ImageNet-1k's (torchvision's list, in the sorted-synset order of the
    Lua's pretrained/imagenet.lua) for a 1000-way model trained on synset folders or without
    names; else the names as stored, and the class index for an output beyond them (a
    network trained with more outputs than its data's classes)."""
    if n_outputs == 1000 and (not classes or all(WNID.fullmatch(c) for c in classes)):
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    names = list(classes or [])[:n_outputs]
    return names + [f"output {i}" for i in range(len(names), n_outputs)]


class View(NamedTuple):
    """How a network sees an image: the data set it was trained on, and for ImageNet-shaped
    networks the short side images are resized to, the centre crop and the resize's
    interpolation (the Lua's 256 / 224, bicubic here, unless the model file records others:
    -cropSize, -valResize, -valCrop, -valInterpolation)."""

    dataset: str
    resize: int = 256
    crop: int = 224
    interpolation: str = "bicubic"


def source_and_inputs(checkpoint: str, inputs: list[str], weights: str | None):
    """(the model file or weights name, the other arguments): with -weights NAME the
    CHECKPOINT argument is the first input instead."""
    if weights:
        return weights, [checkpoint, *inputs]
    return checkpoint, inputs


def model_record(source: str) -> checkpoints.ModelFile:
    """The model record of a model file, or of published weights by name (fetched through
    their library's cache)."""
    if not os.path.exists(source) and pretrained.is_weights_name(source):
        return pretrained.fetch(pretrained.resolve(source))
    return checkpoints.load_model_file(source)


class Loaded(NamedTuple):
    """A model file's network ready to evaluate, and what it is."""

    model: torch.nn.Module  # in eval mode, with its evaluated (-ema) weights
    view: View
    names: list[str]  # a readable name per output
    arch: dict  # models.create()'s arguments
    record: checkpoints.ModelFile


def loaded_model(path: str, device: torch.device) -> Loaded:
    """The network of a model file (ours, exported, or a torchvision state_dict) or of
    published weights by name, in eval mode on device, with its averaged weights when it
    has them (-ema), how it sees images, and its class names."""
    record = model_record(path)
    state_dict, _ = record.evaluated()  # the -ema weights when saved
    if record.arch:
        arch = models.complete_arch(record.arch, path)
    else:
        try:
            arch = convert.arch_of_torchvision(state_dict)
        except ValueError as exc:  # no network of this tool's: the file the user gave
            raise checkpoints.CheckpointError(str(exc)) from None
    model = models.user_network(arch)
    load_weights(model, state_dict, path)  # torchvision names accepted, one-line errors
    names = imagenet_names(record.classes, model.fc.out_features)
    view = View(arch["dataset"], **(record.evaluation or {}))
    check_fits(view, path, device)
    return Loaded(model.to(device).eval(), view, names, arch, record)


def check_fits(view: View, source: str, device: torch.device) -> None:
    """A UsageError, before any image is prepared, when one image resized and cropped as the
    model file records cannot fit in the device's memory (as main.py refuses such sizes)."""
    if table.is_small(view.dataset):
        return
    crops = folder_samples.Crops(view.crop, view.resize, view.crop, view.interpolation)
    available = devices.memory(device)
    for _, side, needed, _ in datasets.image_memory(crops, batch=1, workers=1):
        if needed > available:
            raise checkpoints.CheckpointError(
                f"{source} prepares images at {side} pixels a side (its evaluation resize"
                f" {view.resize}, crop {view.crop}): one needs over {needed / 2**30:,.0f} GiB,"
                f" more than the {available / 2**30:,.0f} GiB of the {device.type.upper()} memory"
            )


def load_model(path: str, device: torch.device) -> tuple[torch.nn.Module, View, list[str]]:
    """(the network in eval mode on device, how it sees images, its class names): see
    loaded_model."""
    loaded = loaded_model(path, device)
    return loaded.model, loaded.view, loaded.names


def preprocessing(view: View) -> dict:
    """How an image is prepared for the network, in words a deployment can follow: resize
    (short side for ImageNet-shaped networks, the whole image for CIFAR-shaped ones), centre
    crop, interpolation, the range pixels are scaled to, then mean and std per channel."""
    if table.is_small(view.dataset):
        size, mode, (mean, std) = small_images(view.dataset)
        return {"dataset": view.dataset, "resize": [size, size], "crop": size,
                "interpolation": "bicubic", "pixel_range": 255, "mean": list(mean),
                "std": list(std), "grey": mode == "L"}  # fmt: skip
    mean, std = folder_samples.MEANSTD
    return {"dataset": view.dataset, "resize": view.resize, "crop": view.crop,
            "interpolation": view.interpolation, "pixel_range": 1, "mean": list(mean),
            "std": list(std), "grey": False}  # fmt: skip


def preprocess(path: str, view: View) -> torch.Tensor:
    """The Lua's test transform of one image as a float 3 x H x W tensor: ImageNet-shaped
    networks Scale(256), CenterCrop(224) (or the view's sizes), normalise (classify.lua);
    CIFAR-shaped ones the image resized to 32 x 32 and normalised with the data set's mean
    and std."""
    try:
        with Image.open(path) as image:
            if table.is_small(view.dataset):
                return small_image(image, view.dataset)
            sample = folder_samples.ValSample(
                False, size=view.crop, scale=view.resize, interpolation=view.interpolation
            )
            pixels, _ = sample(image)
    except decoding.DECODE_ERRORS as exc:
        raise imagenet.DataError(f"cannot read image {path}: {exc}") from None
    floats = TF.to_dtype(pixels, torch.float32, scale=True)  # as the training's val batches
    return photometric.standardise(floats, *folder_samples.MEANSTD)


def small_images(dataset: str) -> tuple[int, str, tuple]:
    """(side, PIL mode, (mean, std) on the 0-255 scale) of a CIFAR / Fashion-MNIST set."""
    if dataset == "fashionmnist":
        return 28, "L", (fashionmnist.MEAN, fashionmnist.STD)
    return 32, "RGB", cifar.MEANSTD[dataset]


def small_image(image: Image.Image, dataset: str) -> torch.Tensor:
    """An image as the CIFAR / Fashion-MNIST networks saw their data: resized to the data
    set's size, on the 0-255 scale, normalised with its mean and std, 3 channels."""
    size, mode, (mean, std) = small_images(dataset)
    pixels = TF.pil_to_tensor(image.convert(mode).resize((size, size), Image.BICUBIC)).float()
    return photometric.standardise(pixels, mean, std)  # a grey channel broadcasts to 3


def images_below(folder: str) -> list[str]:
    """The image files in folder and its subfolders (a class-per-folder tree), sorted."""
    found = []
    for parent, folders, _ in os.walk(folder):
        folders.sort()
        names, _ = folder_index.image_files_in(parent)  # regular files only, as for training
        found.extend(os.path.join(parent, name) for name in sorted(names))
    return found


def image_files(arguments: list[str]) -> list[str]:
    """The image files named, a directory standing for the images in it and below it."""
    files = []
    for argument in arguments:
        if os.path.isdir(argument):
            files.extend(images_below(argument))
        elif os.path.isfile(argument):
            files.append(argument)
        else:
            raise imagenet.DataError(f"no such image or directory: {argument}")
    if not files:
        raise imagenet.DataError("no images given (files or directories of images)")
    return files


def batches(files: list[str], view: View, size: int):
    """(file names, stacked inputs) in batches of size."""
    for first in range(0, len(files), size):
        names = files[first : first + size]
        yield names, torch.stack([preprocess(name, view) for name in names])


def device_for_inference() -> torch.device:
    """What -device auto picks: the first CUDA GPU, else MPS, else the CPU."""
    kind = devices.device_type("auto", 1, devices.Machine.here())
    return devices.select_device(kind, 1, 0, 1)
