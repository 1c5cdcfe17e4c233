"""Datasets by name, and the DataLoaders that feed the trainer."""

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from datasets import cifar, decoding, fashionmnist, folder_samples, imagenet, policies
from datasets.cifar import ArrayImageDataset, DataError
from datasets.erasing import Erasing, PixelSpace
from datasets.memory import InMemoryLoader
from datasets.sampler import EpochSampler, ignore_interrupts
from datasets.table import DATASETS, MOST_CLASSES, is_small
from runtime import devices

__all__ = [
    "DataError",
    "close",
    "EpochSampler",
    "InMemoryLoader",
    "create",
    "create_loaders",
    "make_loader",
    "set_epoch",
]


@dataclass(frozen=True)
class DataSpec:
    """What a run reads and how: the data set and its folder, the global batch, the loader
    processes, the crops and the augmentation of training images."""

    dataset: str
    data: str = ""  # the files' folder ('': the default place)
    gen: str = "gen"  # the image index cache and downloads
    batch_size: int = 32  # global: each of the job's processes loads its share
    workers: int = 2
    seed: int = 0
    ten_crop: bool = False
    skip_corrupt: bool = False
    decode_on_device: bool = False
    crops: folder_samples.Crops = folder_samples.LUA_CROPS  # folder datasets only
    auto_augment: str = "none"
    erasing: Erasing = Erasing()  # -randomErasing and its style
    repeats: int = 1  # repeated augmentation
    storage: imagenet.Storage = imagenet.LOCAL  # shards and Hugging Face files

    def evaluation_sizes(self) -> dict | None:
        """What model files record of how a folder dataset's val images were prepared: the
        short side they were resized to, how, and the centre crop (None in memory)."""
        if self.dataset != "imagenet":
            return None
        crops = self.crops
        return {
            "resize": crops.val_resize,
            "crop": crops.val,
            "interpolation": crops.val_interpolation,
        }

    def val_crops(self) -> int:
        """Crops each val image is tested with: 10 with -tenCrop."""
        return 10 if self.ten_crop else 1

    def input_side(self) -> int:
        """The side of the square images the network is fed at evaluation."""
        return input_side(self.dataset, self.crops.val)


def load(
    name: str, split: str, *, data: str, gen: str, reading: imagenet.Reading = imagenet.LUA_READING
) -> Dataset:
    """The train or val split of dataset `name`; the result has .classes. `reading` is for
    folder datasets (the in-memory loaders augment whole batches)."""
    if name in cifar.FOLDERS:
        dataset = cifar.load(name, split, data, gen)
    elif name == "fashionmnist":
        dataset = fashionmnist.load(split, data, gen)
    elif name == "imagenet":
        cache = os.path.join(gen, f"{name}.json")
        dataset = imagenet.load(split, data, cache, reading)
    else:
        raise DataError(f"unknown dataset: {name}")
    if len(dataset.classes) > MOST_CLASSES:
        raise DataError(f"{data or name} names {len(dataset.classes):,} classes, more than"
                        f" {MOST_CLASSES:,}: not a data set this tool trains")  # fmt: skip
    if len(dataset) == 0:  # an epoch over no image would report 0% error, and save it as best
        raise DataError(f"the {split} split of {data or name} holds no images: give data with"
                        f" at least one {split} image")  # fmt: skip
    return dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    ranks: tuple[int, int] = (0, 1),
    train: bool = False,
    repeats: int = 1,
) -> DataLoader:
    """Batches in the EpochSampler's order (reshuffled each epoch), last partial batch kept.
    batch_size is global: with ranks = (rank, world), world > 1 processes, this rank loads
    its share of each."""
    folder = isinstance(dataset, imagenet.ImageFolder)
    collate = imagenet.collate_skipping if folder else None
    # The Lua permutes the val set too; harmless, and kept.
    sampler = EpochSampler(
        len(dataset),
        seed,
        batch_size=batch_size,
        ranks=ranks,
        train=train,
        repeats=repeats,
        grouping=dataset.grouping() if folder else None,
    )
    return DataLoader(
        dataset,
        batch_size=-(-batch_size // ranks[1]),  # the largest share of a global batch
        sampler=sampler,
        drop_last=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate,
        worker_init_fn=ignore_interrupts if workers > 0 else None,
    )


@contextlib.contextmanager
def closed_after(loaders: tuple):
    """The loaders for the block, their worker processes stopped after it."""
    try:
        yield loaders
    finally:
        for loader in loaders:
            close(loader)


def close(loader) -> None:
    """Stop a loader's persistent worker processes now, not at garbage collection: workers
    ignore SIGTERM, so one still running at exit would block the interpreter's exit."""
    loader = getattr(loader, "loader", loader)  # unwrap DeviceFinishing
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def create(spec: DataSpec, split: str) -> Dataset:
    """The train or val split that spec describes (load() with its fields)."""
    folder_training = spec.dataset == "imagenet" and split == "train"  # (else no augment)
    augment = image_augment(spec, folder_samples.FOLDER_SPACE) if folder_training else None
    reading = imagenet.Reading(
        spec.ten_crop, spec.skip_corrupt, spec.decode_on_device, spec.crops, augment, spec.storage
    )
    return load(spec.dataset, split, data=spec.data, gen=spec.gen, reading=reading)


def input_side(dataset: str, folder_crop: int) -> int:
    """The side of the square images a network of `dataset` is fed (a folder dataset's:
    folder_crop)."""
    kind = DATASETS.get(dataset)
    return kind.side if kind and kind.side else folder_crop


def input_kind(dataset: str, folder_crop: int) -> str:
    """The images a network of `dataset` is fed, in words: '28 x 28 grey', '32 x 32 colour',
    or a folder dataset's square crop of folder_crop."""
    side = input_side(dataset, folder_crop)
    grey = dataset in DATASETS and DATASETS[dataset].channels == 1
    return f"{side} x {side} {'grey' if grey else 'colour'}"


def input_note(before: tuple[str, int], now: tuple[str, int]) -> str | None:
    """A warning when weights trained on the images of (dataset, folder crop) `before` are
    fed those of `now` (another size, or grey for colour); None when they are alike."""
    kinds = [input_kind(*images) for images in (before, now)]
    if kinds[0] == kinds[1]:
        return None
    return (
        f"=> warning: these weights were trained on {kinds[0]} images ({before[0]}); this"
        f" run feeds them {kinds[1]} images ({now[0]}): expect their first layers to adapt"
        " slowly"
    )


# An evaluating ResNet holds at least this many float32 copies of its input batch at once
# (the stem's output alone is 5 1/3): a lower bound, so that no size that fits is refused.
ACTIVATION_COPIES = 8


def check_image_sizes(
    dataset: str,
    crops: folder_samples.Crops,
    *,
    batch: int,
    workers: int,
    memory: Callable[[], int],
    device: str,
) -> None:
    """A folder dataset's crops and resize whose images cannot fit in memory() bytes (the
    device's, asked only here) are a DataError before any work (not after an epoch): a
    crop's batch of `batch` images with its activations, a resized val image in each of
    `workers` loader processes."""
    if is_small(dataset):
        return
    available = memory()
    for flag, side, needed, other in image_memory(crops, batch, workers):
        if needed > available:
            raise DataError(
                f"{flag} {side} needs over {needed / 2**30:,.0f} GiB for its images alone,"
                f" more than the {available / 2**30:,.0f} GiB of the {device.upper()} memory:"
                f" give a smaller {flag} (or {other})"
            )


def image_memory(crops: folder_samples.Crops, batch: int, workers: int) -> list[tuple]:
    """(flag, side, bytes, the other flag it scales with) of what a folder dataset's images
    hold in memory at once: a crop's batch with its activations, a resized val image in each
    loader process."""
    batch_bytes = batch * 3 * 4 * ACTIVATION_COPIES  # per pixel
    resized_bytes = max(1, workers) * 3 * 4 / 3  # uint8 RGB, 4:3, one per worker
    train_flag = "-trainCrop" if crops.train != crops.val else "-cropSize"
    held = (
        (train_flag, crops.train, batch_bytes, "-batchSize"),
        ("-valCrop", crops.val, batch_bytes, "-batchSize"),
        ("-valResize", crops.val_resize, resized_bytes, "-nThreads"),
    )
    return [(flag, side, side * side * per_pixel, other) for flag, side, per_pixel, other in held]


def image_augment(spec: DataSpec, space: PixelSpace) -> policies.ImageAugment | None:
    """-autoAugment and -randomErasing of images stored in `space`, or None when both are
    off."""
    if spec.auto_augment == "none" and not spec.erasing.probability:
        return None
    return policies.ImageAugment(spec.auto_augment, spec.erasing, space)


def set_epoch(loader, epoch: int, start: int = 0) -> None:
    """Select epoch's sample order, beginning at sample `start`, for either loader kind."""
    target = loader if isinstance(loader, InMemoryLoader) else loader.sampler
    target.set_epoch(epoch, start)


def memory_space(dataset: ArrayImageDataset) -> PixelSpace:
    """The normalised pixels of an in-memory dataset, as erasing writes into them."""
    grey = dataset.images.shape[1] == 1
    return PixelSpace(tuple(dataset.mean), tuple(dataset.std), True, grey)


def order_of(dataset) -> str:
    """What an epoch's order of the dataset depends on beyond the seed and the epoch: the
    layout its samples are stored in, their number and, for samples read a block at a time,
    -shuffleBuffer. A mid-epoch resume continues at the same position of the order, so it is
    exact only where this is the same."""
    layout = getattr(getattr(dataset, "samples", None), "layout", "images in memory")
    grouping = dataset.grouping() if hasattr(dataset, "grouping") else {}
    window = f", -shuffleBuffer {grouping['window']}" if grouping else ""
    return f"{layout} of {len(dataset)} images{window}"


def create_loaders(spec: DataSpec, device: torch.device, rank: int = 0, world: int = 1) -> tuple:
    """Train and val loaders: in memory for CIFAR / Fashion-MNIST, DataLoader workers for
    folders; with -tenCrop the val batch is floor(batchSize / 10) images. -batchSize is
    global: each of `world` processes loads its share of every batch."""
    train_set, val_set = create(spec, "train"), create(spec, "val")
    shares = (rank, world)
    if isinstance(train_set, ArrayImageDataset):
        augment = image_augment(spec, memory_space(train_set))  # erased once normalised
        return (
            InMemoryLoader(train_set, spec.batch_size, seed=spec.seed, train=True, device=device,
                           ranks=shares, augment=augment, repeats=spec.repeats),
            InMemoryLoader(val_set, spec.batch_size, seed=spec.seed + 1, train=False,
                           device=device, ranks=shares),
        )  # fmt: skip
    kwargs = {"workers": spec.workers, "pin_memory": devices.pins_memory(device), "ranks": shares}
    train = make_loader(
        train_set, spec.batch_size, seed=spec.seed, train=True, repeats=spec.repeats, **kwargs
    )
    val = make_loader(val_set, spec.batch_size // spec.val_crops(), seed=spec.seed + 1, **kwargs)
    if spec.decode_on_device:
        decoding.check_device_decoding(device)
    skip = spec.skip_corrupt
    return imagenet.finish_on(train, device, skip), imagenet.finish_on(val, device, skip)
