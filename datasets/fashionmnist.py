"""Fashion-MNIST from its IDX files, trained with the CIFAR recipe.

Sources, in order: -data, Debian's dataset-fashion-mnist files, an earlier download in
-gen, a download into -gen through torchvision. The files are read where they are (gzipped
or not), never copied, so no stale copy can stand in for another -data. Images are
28 x 28 greyscale, fed to the networks as 3 equal channels.
"""

import gzip
import math
import os
import struct
import zlib

import torch

from datasets import downloads
from datasets.cifar import ArrayImageDataset, DataError, check_labels, small_image_transform

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]  # fmt: skip
IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes
# Computed over the 60,000 training images, on the 0-255 scale as the CIFAR constants.
MEAN, STD = (72.94,) * 3, (90.02,) * 3


def all_names() -> list[str]:
    """The four IDX file names."""
    return [name for pair in FILES.values() for name in pair]


def file_in(root: str, name: str) -> str | None:
    """root/name or root/name.gz, whichever exists."""
    for candidate in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def find_source(roots: list[str]) -> str | None:
    """The first folder that holds all four IDX files, gzipped or not."""
    for root in roots:
        if all(file_in(root, name) for name in all_names()):
            return root
    return None


def read_idx(path: str, dimensions: int) -> torch.Tensor:
    """The uint8 array of an IDX file (gzipped or not) with the given number of
    dimensions, or DataError saying what is wrong with it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {exc}") from None
    header = 4 + 4 * dimensions
    if len(content) < header or content[:4] != bytes((0, 0, IDX_UBYTE, dimensions)):
        raise DataError(
            f"{path} is not an IDX file of {dimensions}-dimensional bytes (its header is"
            f" {content[:4].hex() or 'empty'}, expected 000008{dimensions:02x})"
        )
    shape = struct.unpack(f">{dimensions}I", content[4:header])
    if len(content) - header != math.prod(shape):
        raise DataError(
            f"{path} holds {len(content) - header} bytes of data where its header promises"
            f" {math.prod(shape)} ({' x '.join(map(str, shape))}): truncated or damaged"
        )
    return torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8).view(shape)


def read_split(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 1 x 28 x 28 images, N labels in 0..9) of a split, checked."""
    images_path, labels_path = (file_in(root, name) for name in FILES[split])
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1).long()
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{images_path} holds images of {tuple(images.shape[1:])}, not 28 x 28")
    if len(images) != len(labels):
        raise DataError(f"{labels_path} has {len(labels)} labels for {len(images)} images")
    check_labels(labels, len(CLASSES), labels_path)
    return images.unsqueeze(1), labels


def download(gen: str) -> str:
    """Download the files into <gen>/FashionMNIST/raw through torchvision, or explain
    where they go."""
    import torchvision  # only to download

    print(f"=> Downloading Fashion-MNIST into {gen}")
    try:
        with downloads.cleaned_on_failure(gen):
            torchvision.datasets.FashionMNIST(gen, train=True, download=True)
    except Exception as exc:  # any network failure: say where the files go instead
        raise DataError(
            f"Fashion-MNIST not found and could not be downloaded ({type(exc).__name__}): put"
            f" {', '.join(n + '.gz' for n in all_names())} in -data, or install Debian's"
            " dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        ) from None
    return os.path.join(gen, "FashionMNIST", "raw")


def load(split: str, data: str, gen: str) -> ArrayImageDataset:
    """Fashion-MNIST train or test ("val") split with the CIFAR-style transforms."""
    if data and find_source([data]) is None:
        raise DataError(f"no Fashion-MNIST IDX files ({', '.join(all_names())}, or .gz) in {data}")
    downloaded = os.path.join(gen, "FashionMNIST", "raw")
    source = find_source([r for r in (data, DEBIAN_DIR, downloaded) if r]) or download(gen)
    images, labels = read_split(source, split)
    transform = small_image_transform(MEAN, STD, split == "train", 28)
    return ArrayImageDataset(images, labels, list(CLASSES), transform, (MEAN, STD))
