"""CIFAR-10 / CIFAR-100 from the original python-pickle folders, held in memory.

The Lua recipe: pixels on the 0-255 scale, normalised with the train-set mean/std,
then flipped, zero-padded by 4 (the padding is the mean colour, since it comes after
normalisation) and randomly cropped back to 32 x 32. Validation is the test set, as is.
"""

import os
import pickle

import torch

from datasets import downloads
from datasets import transforms as T
from datasets.sampler import split_item
from errors import UsageError, first_line

MEANSTD = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
}
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
FILES = {
    ("cifar10", "train"): [f"data_batch_{i}" for i in range(1, 6)],
    ("cifar10", "val"): ["test_batch"],
    ("cifar100", "train"): ["train"],
    ("cifar100", "val"): ["test"],
}
LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}
META = {"cifar10": ("batches.meta", "label_names"), "cifar100": ("meta", "fine_label_names")}
N_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGE_BYTES = 3 * 32 * 32
# What a CIFAR batch may contain: numpy arrays, scalars and bytes as numpy 1 and 2 pickle
# them (protocols 2 to 5), nothing that runs code.
SAFE_GLOBALS = {
    *((f"numpy.{core}.{module}", name) for core in ("core", "_core")
      for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                           ("numeric", "_frombuffer"))),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}  # fmt: skip


class DataError(UsageError):
    """Missing or malformed data files; main prints it as one 'error:' line."""


class DamagedStorage(OSError):
    """A part of a data file that cannot be read (a damaged parquet page), found when an
    image in it is read: its message names the file and part; -skipCorrupt skips its images
    as it skips any unreadable image."""


class ArrayImageDataset(torch.utils.data.Dataset):
    """uint8 images N x C x H x W in memory, transformed one by one into 3-channel floats."""

    def __init__(self, images, labels, classes: list[str], transform: T.Transform, meanstd):
        self.images = images
        self.labels = labels
        self.classes = classes
        self.transform = transform
        self.mean, self.std = meanstd  # for whole-batch augmentation (datasets.memory)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        index, generator = split_item(item)
        image = self.images[index].float()
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)  # greyscale data feeds the 3-channel networks
        return self.transform(image, generator), int(self.labels[index])


def small_image_transform(mean, std, train: bool, size: int) -> T.Transform:
    """The Lua's CIFAR preprocessing: normalise; for training also flip and pad-4 crop."""
    normalize = T.ColorNormalize(mean, std)
    if not train:
        return normalize
    return T.Compose([normalize, T.HorizontalFlip(0.5), T.RandomCrop(size, 4)])


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global but the numpy array constructors."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: str, what: str):
    """The object in a pickle file, through RestrictedUnpickler, or DataError naming it."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    except Exception as exc:  # a damaged pickle can fail anywhere inside the unpickler
        raise DataError(
            f"cannot read {what} {path}: damaged or not a pickle ({first_line(exc)})"
        ) from None


def entry(content, key: str, path: str):
    """content[key] of a CIFAR pickle, whose keys are bytes (Python 2) or str (Python 3)."""
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {type(content).__name__}, not a CIFAR dict")
    for candidate in (key.encode(), key):
        if candidate in content:
            return content[candidate]
    raise DataError(f"{path} has no {key!r} entry; is it a CIFAR file of the python version?")


def read_batch(path: str, label_key: str, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle batch as (N x 3 x 32 x 32 uint8 images, N labels in 0..n_classes-1)."""
    batch = read_pickle(path, "CIFAR batch")
    data, labels = entry(batch, "data", path), entry(batch, label_key, path)
    try:
        images = torch.as_tensor(data)
        labels = torch.as_tensor(list(labels), dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise DataError(f"{path}: 'data' or {label_key!r} is not an array of numbers") from None
    if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{path}: 'data' is {tuple(images.shape)} {images.dtype}, expected N x"
            f" {IMAGE_BYTES} uint8 (N images of 3 x 32 x 32)"
        )
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataError(f"{path} has {labels.numel()} labels for {len(images)} images")
    check_labels(labels, n_classes, path)
    return images.reshape(-1, 3, 32, 32), labels


def check_labels(labels: torch.Tensor, n_classes: int, path: str) -> None:
    """Every label must name one of the n_classes classes."""
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if len(bad):
        raise DataError(
            f"{path} has {len(bad)} labels outside 0..{n_classes - 1} (the first:"
            f" {int(bad[0])}); is it the right dataset?"
        )


def class_names(dataset: str, folder: str) -> list[str]:
    """Label names from the folder's meta file, or the class numbers when it is absent."""
    name, key = META[dataset]
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return [str(i) for i in range(N_CLASSES[dataset])]
    names = entry(read_pickle(path, "CIFAR meta file"), key, path)
    if not isinstance(names, list | tuple) or len(names) != N_CLASSES[dataset]:
        raise DataError(f"{path}: {key!r} is not a list of {N_CLASSES[dataset]} class names")
    try:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError:
        raise DataError(f"{path}: a class name in {key!r} is not text") from None


def find_folder(dataset: str, roots: list[str]) -> str | None:
    """The first root that holds the dataset's pickle folder."""
    for root in roots:
        for candidate in (root, os.path.join(root, FOLDERS[dataset])):
            if os.path.basename(os.path.normpath(candidate)) == FOLDERS[dataset] and os.path.isdir(
                candidate
            ):
                return candidate
    return None


def download(dataset: str, gen: str) -> str:
    """Download the pickle folder into gen through torchvision, or explain where to put it."""
    import torchvision

    with downloads.cleaned_on_failure(gen):
        return downloaded(dataset, gen, torchvision)


def downloaded(dataset: str, gen: str, torchvision) -> str:
    """download() in gen (made if needed); DataError naming the files and their source."""
    try:
        os.makedirs(gen, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{dataset} is not in -data and cannot be downloaded into -gen {gen}"
            f" ({exc.strerror}); choose a writable -gen or give -data"
        ) from None
    builder = (
        torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    )
    print(f"=> Downloading {dataset} into {gen}")
    try:
        builder(gen, train=True, download=True)
    except Exception as exc:  # any network failure: say where the files go instead
        files = ", ".join(FILES[(dataset, "train")] + FILES[(dataset, "val")])
        raise DataError(
            f"{dataset} not found and could not be downloaded ({type(exc).__name__}); put the"
            f" folder {FOLDERS[dataset]}/ ({files}) from the python version of the dataset"
            f" (https://www.cs.toronto.edu/~kriz/cifar.html, unpacked) in -data or in {gen}/"
        ) from None
    return os.path.join(gen, FOLDERS[dataset])


def load(dataset: str, split: str, data: str, gen: str) -> ArrayImageDataset:
    """CIFAR train or val ("val" is the official test set) with the Lua's transforms."""
    folder = find_folder(dataset, [r for r in (data, gen) if r]) or download(dataset, gen)
    parts = []
    for name in FILES[(dataset, split)]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{dataset} file missing: {path}")
        parts.append(read_batch(path, LABEL_KEYS[dataset], N_CLASSES[dataset]))
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    mean, std = MEANSTD[dataset]
    transform = small_image_transform(mean, std, split == "train", 32)
    return ArrayImageDataset(images, labels, class_names(dataset, folder), transform, (mean, std))
