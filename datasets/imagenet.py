"""ImageNet, and any images laid out as class folders (<data>/train/<class>/*, indexed by
datasets/folder_index.py), tar shards or Hugging Face files: the dataset that reads them a
sample at a time (decoded by datasets/decoding.py, cropped by datasets/folder_samples.py)
and the device finishing of its batches."""

import itertools
import os
from functools import partial
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import default_collate

from datasets import hf, photometric, policies, shards
from datasets.cifar import DamagedStorage, DataError
from datasets.decoding import DECODE_ERRORS, Encoded, decode_batch
from datasets.folder_index import cached_index, check_split_folders
from datasets.folder_samples import (
    LUA_CROPS,
    MEANSTD,
    PCA_EIGVAL,
    PCA_EIGVEC,
    Crops,
    TrainSample,
    ValSample,
)
from datasets.sampler import split_item


class PackedSamples:
    """(relative path, label) pairs packed into three tensors. Forked loader workers read
    them without writing to the parent's pages, where a list of Python tuples gets copied
    into every worker as reading it touches reference counts (pytorch/pytorch#13246)."""

    layout = "class folders"  # what the epoch's order is an order of (datasets.order_of)

    def __init__(self, samples: list[tuple[str, int]]):
        names = b"".join(os.fsencode(path) for path, _ in samples)  # any file name's bytes
        ends = itertools.accumulate(len(os.fsencode(path)) for path, _ in samples)
        self.names = torch.frombuffer(bytearray(names), dtype=torch.uint8) if names else None
        self.ends = torch.tensor(list(ends), dtype=torch.int64)
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, int]:
        start = int(self.ends[index - 1]) if index > 0 else 0
        name = os.fsdecode(bytes(self.names[start : int(self.ends[index])].tolist()))
        return name, int(self.labels[index])

    def opened(self, index: int, root: str) -> tuple[str, int, str]:
        """(the image's path below root, its label, its name for errors)."""
        relative, label = self[index]
        path = os.path.join(root, relative)
        return path, label, path


class ImageFolder(torch.utils.data.Dataset):
    """Images listed in an index, decoded with PIL and transformed on the fly into
    (uint8 image, colour draws, label) samples.

    With skip_corrupt, an unreadable image yields None, which collate_skipping drops
    and counts; otherwise it raises DataError naming the file.
    """

    def __init__(
        self, root: str, samples: PackedSamples, classes: list[str], transform, skip_corrupt=False
    ):
        self.root = root
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def grouping(self) -> dict:
        """The sampler's blocks and window for samples read a block at a time (parquet row
        groups), else none."""
        blocks = getattr(self.samples, "blocks", None)
        return {} if blocks is None else {"blocks": blocks, "window": self.samples.window}

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        index, generator = split_item(item)
        name = None
        try:
            source, label, name = self.samples.opened(index, self.root)
            with Image.open(source) as image:
                pixels, draws = self.transform(image, generator)
        except DamagedStorage as exc:  # names the file and part itself
            if self.skip_corrupt:
                return None
            raise DataError(str(exc)) from None
        except DECODE_ERRORS as exc:
            if self.skip_corrupt:
                return None
            raise DataError(f"cannot read image {name or index}: {exc}") from exc
        return pixels, draws, label


def collate_skipping(samples: list) -> tuple:
    """Stack the readable samples; the last element counts the skipped ones. Images left
    encoded for the device stay a list (decode_batch stacks them once decoded)."""
    kept = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    images = [sample[0] for sample in kept]
    if any(isinstance(image, Encoded) for image in images):
        return (images, *default_collate([sample[1:] for sample in kept]), skipped)
    return (*default_collate(kept), skipped)


class Storage(NamedTuple):
    """How -data's images are read when they are not class folders: the Hugging Face files'
    image and label columns (-imageColumn, -labelColumn), the images shuffled together when
    read a block at a time (-shuffleBuffer), where tar shards are fetched from (-shardSource:
    '' for -data itself)."""

    image_column: str = "image"
    label_column: str = "label"
    window: int = 1024
    shard_source: str = ""
    fetch_timeout: int = 600  # seconds a shard's fetch may take (-fetchTimeout)


LOCAL = Storage()


class Reading(NamedTuple):
    """How a folder dataset's images are read: the val crops (ten with -tenCrop), whether an
    unreadable image is skipped, JPEGs left encoded for the device, the crop sizes, the
    training images' augmentation (-autoAugment, -randomErasing), and where they are kept."""

    ten_crop: bool = False
    skip_corrupt: bool = False
    decode_on_device: bool = False
    crops: Crops = LUA_CROPS
    augment: policies.ImageAugment | None = None
    storage: Storage = LOCAL


LUA_READING = Reading()


def load(split: str, data: str, cache_path: str, reading: Reading = LUA_READING) -> ImageFolder:
    """The train or val split of a class-per-folder dataset (or its tar shards, or Hugging
    Face parquet / Arrow files), as uint8 samples read as `reading` says."""
    samples, classes, root = indexed_samples(split, data, cache_path, reading.storage)
    transform = sample_transform(split, reading)
    return ImageFolder(root, samples, classes, transform, reading.skip_corrupt)


def sample_transform(split: str, reading: Reading) -> TrainSample | ValSample:
    """The loader workers' per-image transform of split."""
    crops, on_device = reading.crops, {"on_device": reading.decode_on_device}
    if split == "train":
        return TrainSample(crops.train, augment=reading.augment, **on_device)
    return ValSample(
        reading.ten_crop,
        crops.val,
        crops.val_resize,
        **on_device,
        interpolation=crops.val_interpolation,
    )


def indexed_samples(split: str, data: str, cache_path: str, storage: Storage) -> tuple:
    """(samples, classes, root) of split in whichever layout -data holds."""
    sharded = shards.is_sharded(data)
    check_columns(storage, data, "tar shards" if sharded else "class folders")
    if storage.shard_source and not sharded:
        raise DataError(
            f"-shardSource needs the shards' listing in -data: {data} holds no"
            f" {shards.INDEX} (copy it there from the shards)"
        )
    if sharded:
        samples, classes = shards.load_samples(
            data, split, os.path.dirname(cache_path), storage.shard_source, storage.window,
            storage.fetch_timeout,
        )  # fmt: skip
        root = data
    elif hf.is_hf(data):
        columns = hf.Columns(storage.image_column, storage.label_column)
        samples, classes = hf.load_samples(data, split, columns, storage.window)
        root = data
    else:
        check_split_folders(data)
        index = cached_index(data, cache_path)
        samples, classes = PackedSamples([tuple(s) for s in index[split]]), index["classes"]
        root = os.path.join(data, split)
    check_window(storage, data, samples)
    return samples, classes, root


def check_columns(storage: Storage, data: str, layout: str) -> None:
    """-imageColumn / -labelColumn name columns of Hugging Face files: given for data of
    another layout, they would do nothing."""
    columns = {"-imageColumn": (storage.image_column, LOCAL.image_column),
               "-labelColumn": (storage.label_column, LOCAL.label_column)}  # fmt: skip
    changed = [flag for flag, (value, default) in columns.items() if value != default]
    if changed and not hf.is_hf(data):
        raise DataError(
            f"{changed[0]} is for Hugging Face parquet / Arrow data; {data} holds {layout},"
            f" which have no columns: drop {changed[0]}"
        )


def check_window(storage: Storage, data: str, samples) -> None:
    """-shuffleBuffer is for samples read a block at a time (parquet row groups, fetched
    shards); the others are shuffled whole, where it would do nothing."""
    if storage.window != LOCAL.window and getattr(samples, "blocks", None) is None:
        raise DataError(
            f"-shuffleBuffer is for data read a block at a time (parquet files, shards fetched"
            f" by -shardSource); {data} holds {samples.layout}, shuffled whole: drop"
            " -shuffleBuffer"
        )


def finish_on(loader, device, skip_corrupt: bool = False) -> photometric.DeviceFinishing:
    """The loader's uint8 batches (JPEGs decoded first when left encoded) finished on
    `device` with this dataset's constants."""
    constants = {"mean": MEANSTD[0], "std": MEANSTD[1], "eigval": PCA_EIGVAL, "eigvec": PCA_EIGVEC}
    decode = partial(decode_batch, device=torch.device(device), skip_corrupt=skip_corrupt)
    return photometric.DeviceFinishing(loader, device, constants, decode)
