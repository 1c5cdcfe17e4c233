"""ImageNet, and any folder laid out as <data>/train/<class>/* and <data>/val/<class>/*.

Classes are the byte-sorted folder names of train/ (class index = position). The file
index is cached as JSON in <gen>/<dataset>.json and rebuilt when -data changes, as the
Lua's imagenet-gen.lua cache was.
"""

import json
import os

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate

from datasets import transforms as T
from datasets.cifar import DataError
from datasets.sampler import split_item

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
MEANSTD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def list_classes(train_dir: str) -> list[str]:
    """Byte-sorted class folder names (hidden entries and stray files skipped)."""
    names = [
        entry.name
        for entry in os.scandir(train_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    ]
    if not names:
        raise DataError(f"no class folders in {train_dir}: expected train/<class>/<image>")
    return sorted(names, key=lambda name: name.encode())


def list_images(split_dir: str, classes: list[str]) -> list[tuple[str, int]]:
    """(class/file, class index) of every image one level below split_dir, sorted."""
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name.encode()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if entry.name not in index:
            raise DataError(f"class not found in train/: {entry.name} (in {split_dir})")
        names = [n for n in os.listdir(entry.path) if n.lower().endswith(EXTENSIONS)]
        if not names:
            print(f"warning: no images in {entry.path}")
        for name in sorted(names, key=str.encode):
            samples.append((f"{entry.name}/{name}", index[entry.name]))
    if not samples:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {split_dir}")
    return samples


def build_index(data: str) -> dict:
    """Classes and image lists of both splits (the Lua's imagenet-gen.lua)."""
    print("=> Generating list of images")
    classes = list_classes(os.path.join(data, "train"))
    print(" | finding all validation images")
    val = list_images(os.path.join(data, "val"), classes)
    print(" | finding all training images")
    train = list_images(os.path.join(data, "train"), classes)
    return {"basedir": data, "classes": classes, "train": train, "val": val}


def cached_index(data: str, cache_path: str) -> dict:
    """The index from cache_path, rebuilt (and saved) when missing or made for another -data."""
    if os.path.isfile(cache_path):
        try:
            with open(cache_path) as handle:
                index = json.load(handle)
            if index.get("basedir") == data:
                return index
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below
    index = build_index(data)
    print(f" | saving list of images to {cache_path}")
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    partial = cache_path + ".partial"
    with open(partial, "w") as handle:
        json.dump(index, handle)
    os.replace(partial, cache_path)
    return index


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB, or raise DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


class ImageFolder(torch.utils.data.Dataset):
    """Images listed in an index, decoded with PIL and transformed on the fly.

    With skip_corrupt, an unreadable image yields None, which collate_skipping drops
    and counts; otherwise it raises DataError naming the file.
    """

    def __init__(self, root: str, samples: list, classes: list[str], transform, skip_corrupt=False):
        self.root = root
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item) -> tuple[torch.Tensor, int] | None:
        index, generator = split_item(item)
        relative, label = self.samples[index]
        try:
            image = load_rgb(os.path.join(self.root, relative))
        except DataError:
            if self.skip_corrupt:
                return None
            raise
        return self.transform(image, generator), label


def collate_skipping(samples: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; the third element counts the skipped ones."""
    kept = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    images, labels = default_collate(kept)
    return images, labels, skipped


def train_transform(size: int = 224):
    """RandomSizedCrop, ColorJitter 0.4, Lighting 0.1, normalise, flip (datasets/imagenet.lua)."""
    return T.Compose(
        [
            T.RandomSizedCrop(size),
            T.ToTensor(),
            T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            T.Lighting(0.1, PCA_EIGVAL, PCA_EIGVEC),
            T.ColorNormalize(*MEANSTD),
            T.HorizontalFlip(0.5),
        ]
    )


def val_transform(ten_crop: bool, size: int = 224, scale: int = 256):
    """Scale 256, normalise, then CenterCrop 224 or TenCrop 224."""
    crop = T.TenCrop(size) if ten_crop else T.CenterCrop(size)
    return T.Compose([T.Scale(scale), T.ToTensor(), T.ColorNormalize(*MEANSTD), crop])


def load(
    split: str, data: str, cache_path: str, ten_crop: bool = False, skip_corrupt: bool = False
) -> ImageFolder:
    """The train or val split of a class-per-folder dataset."""
    index = cached_index(data, cache_path)
    transform = train_transform() if split == "train" else val_transform(ten_crop)
    samples = [tuple(sample) for sample in index[split]]
    folder = os.path.join(data, split)
    return ImageFolder(folder, samples, index["classes"], transform, skip_corrupt)
