"""The -dataset names and what each one is: the one table the options, the models and the
loaders read (no torch here: the option parser reads it)."""

from typing import NamedTuple


class DatasetKind(NamedTuple):
    """What a -dataset name means before any file is read."""

    title: str  # as the Lua's startup lines print it
    classes: int  # the classifier's width by default (a folder dataset: its folders')
    side: int  # the side of its images (0: a folder dataset's, cropped to -cropSize)
    channels: int  # 1: grey (given to the network as 3 equal channels), 3: colour
    epochs: int  # -nEpochs 0 means this many (the ResNeXt fork's defaults)


DATASETS = {
    "imagenet": DatasetKind("ImageNet", 1000, 0, 3, 100),
    "cifar10": DatasetKind("CIFAR-10", 10, 32, 3, 300),
    "cifar100": DatasetKind("CIFAR-100", 100, 32, 3, 300),
    "fashionmnist": DatasetKind("Fashion-MNIST", 10, 28, 1, 300),
}
# More classes than any real data set has (ImageNet-21k: 21,841): class names read from files
# that may come from someone else (a shard listing, parquet metadata) are refused beyond it
# before they size a classifier.
MOST_CLASSES = 10**6
# The in-memory datasets of small images, which the CIFAR-shaped networks take.
SMALL_IMAGES = tuple(name for name, kind in DATASETS.items() if kind.side)


def is_small(dataset: str) -> bool:
    """True for the small-image datasets that use the CIFAR networks."""
    return dataset in SMALL_IMAGES
