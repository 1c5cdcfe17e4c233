"""Fashion-MNIST through torchvision's reader, trained with the CIFAR recipe.

Sources, in order: -data, Debian's dataset-fashion-mnist files, a download into -gen.
The gzipped IDX files are unpacked into <gen>/FashionMNIST/raw/, where torchvision
reads them. Images are 28 x 28 greyscale, fed to the networks as 3 equal channels.
"""

import gzip
import os
import shutil

import torch
import torchvision

from datasets.cifar import ArrayImageDataset, DataError, small_image_transform

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Computed over the 60,000 training images, on the 0-255 scale as the CIFAR constants.
MEAN, STD = (72.94,) * 3, (90.02,) * 3


def find_source(roots: list[str]) -> str | None:
    """The first folder that holds all four IDX files, gzipped or not."""
    for root in roots:
        if all(
            os.path.isfile(os.path.join(root, n)) or os.path.isfile(os.path.join(root, n + ".gz"))
            for n in FILES
        ):
            return root
    return None


def unpack(source: str, raw: str) -> None:
    """Copy or gunzip the four files into torchvision's raw folder when they are newer."""
    os.makedirs(raw, exist_ok=True)
    for name in FILES:
        target = os.path.join(raw, name)
        plain, packed = os.path.join(source, name), os.path.join(source, name + ".gz")
        origin = plain if os.path.isfile(plain) else packed
        if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(origin):
            continue
        partial = f"{target}.{os.getpid()}.partial"  # ranks may unpack at the same time
        opener = gzip.open if origin == packed else open
        try:
            with opener(origin, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read Fashion-MNIST file {origin}: {exc}") from exc
        os.replace(partial, target)


def read(gen: str, train: bool) -> torchvision.datasets.FashionMNIST:
    """torchvision's dataset over <gen>/FashionMNIST, downloading only if it is missing."""
    try:
        return torchvision.datasets.FashionMNIST(gen, train=train, download=False)
    except RuntimeError:
        pass  # not there yet: try the network below
    print(f"=> Downloading Fashion-MNIST into {gen}")
    try:
        return torchvision.datasets.FashionMNIST(gen, train=train, download=True)
    except Exception as exc:  # any network failure: say where the files go instead
        raise DataError(
            f"Fashion-MNIST not found and could not be downloaded ({type(exc).__name__}): put"
            f" {', '.join(n + '.gz' for n in FILES)} in -data, or install Debian's"
            " dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        ) from None


def load(split: str, data: str, gen: str) -> ArrayImageDataset:
    """Fashion-MNIST train or test ("val") split with the CIFAR-style transforms."""
    source = find_source([r for r in (data, DEBIAN_DIR) if r])
    if data and source is None:
        raise DataError(f"no Fashion-MNIST IDX files ({', '.join(FILES)}, or .gz) in {data}")
    if source is not None:
        unpack(source, os.path.join(gen, "FashionMNIST", "raw"))
    dataset = read(gen, train=split == "train")
    images = dataset.data.unsqueeze(1).to(torch.uint8)
    transform = small_image_transform(MEAN, STD, split == "train", 28)
    labels, classes = dataset.targets.long(), list(dataset.classes)
    return ArrayImageDataset(images, labels, classes, transform, (MEAN, STD))
