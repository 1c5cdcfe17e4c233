"""Datasets by name, and the DataLoaders that feed the trainer."""

import os

import torch
from torch.utils.data import DataLoader, Dataset

from datasets import cifar, fashionmnist, imagenet
from datasets.cifar import DataError

__all__ = ["DataError", "create", "create_loaders", "make_loader"]


def load(name: str, split: str, *, data: str, gen: str, ten_crop: bool = False) -> Dataset:
    """The train or val split of dataset `name`; the result has .classes."""
    if name in cifar.FOLDERS:
        return cifar.load(name, split, data, gen)
    if name == "fashionmnist":
        return fashionmnist.load(split, data, gen)
    if name == "imagenet":
        return imagenet.load(split, data, os.path.join(gen, f"{name}.json"), ten_crop)
    raise DataError(f"unknown dataset: {name}")


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Reshuffled every epoch from a seeded generator, last partial batch kept."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,  # the Lua permutes the val set too; harmless, and kept
        drop_last=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=generator,
    )


def create(opts, split: str) -> Dataset:
    """Adapter from the parsed options to load()."""
    return load(opts.dataset, split, data=opts.data, gen=opts.gen, ten_crop=opts.tenCrop)


def create_loaders(opts, pin_memory: bool = False) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders; with -tenCrop the val batch is floor(batchSize / 10) images."""
    train_set, val_set = create(opts, "train"), create(opts, "val")
    n_crops = 10 if opts.tenCrop else 1
    kwargs = {"workers": opts.nThreads, "pin_memory": pin_memory}
    train = make_loader(train_set, opts.batchSize, seed=opts.manualSeed, **kwargs)
    val = make_loader(val_set, opts.batchSize // n_crops, seed=opts.manualSeed + 1, **kwargs)
    return train, val
