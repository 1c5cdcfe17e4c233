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

from datasets import photometric
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
    partial = f"{cache_path}.{os.getpid()}.partial"  # ranks may build it at the same time
    with open(partial, "w") as handle:
        json.dump(index, handle)
    os.replace(partial, cache_path)
    return index


DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB, or raise DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def decode_rgb(image: Image.Image, reduce_by: float = 1.0) -> torch.Tensor:
    """uint8 3 x H x W of an opened, not yet decoded image. A JPEG that will be shrunk by
    reduce_by or more anyway is decoded up to that much smaller (DCT scaling, PIL's draft),
    in powers of 2, which is several times cheaper than decoding it whole."""
    scale = max((s for s in (1, 2, 4, 8) if s <= reduce_by), default=1)
    if scale > 1 and image.format == "JPEG":
        width, height = image.size
        # draft picks the largest of 1/2/4/8 with width // requested >= it: exactly scale.
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    # One copy out of PIL (pil_to_tensor makes two); H x W x 3 viewed as 3 x H x W, a
    # layout torchvision's uint8 resize is fastest on.
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1)


def rescale_box(box, width: int, height: int, pixels: torch.Tensor):
    """A crop box (x1, y1, w, h) given on the width x height original, on decoded pixels
    that may be smaller (draft decoding); None stays None."""
    if box is None or pixels.shape[-2:] == (height, width):
        return box
    sy, sx = pixels.shape[-2] / height, pixels.shape[-1] / width
    x1, y1 = round(box[0] * sx), round(box[1] * sy)
    w = max(1, min(round(box[2] * sx), pixels.shape[-1] - x1))
    h = max(1, min(round(box[3] * sy), pixels.shape[-2] - y1))
    return x1, y1, w, h


class TrainSample:
    """The loader-worker half of the ImageNet train transform: RandomSizedCrop to uint8
    (decoding small when the crop is shrunk 2x or more), then the colour draws, then the
    flip, in the Lua's draw order; datasets.photometric finishes the batch on the device."""

    def __init__(self, size: int = 224, draft: bool = True):
        self.crop = T.RandomSizedCrop(size)
        self.draft = draft

    def __call__(self, image: Image.Image, generator: T.Generator = None):
        width, height = image.size
        box = self.crop.crop_box(width, height, generator)
        covered = min(box[2:]) if box else min(width, height)
        pixels = decode_rgb(image, covered / self.crop.size if self.draft else 1.0)
        pixels = self.crop.apply(pixels, rescale_box(box, width, height, pixels))
        draws = photometric.draw(generator)
        if T.uniform(0, 1, generator) < 0.5:
            pixels = pixels.flip(-1)
        return pixels, draws


class ValSample:
    """The loader-worker half of the ImageNet val transform: Scale 256 and CenterCrop 224
    (or TenCrop) as uint8; normalisation follows on the device."""

    def __init__(self, ten_crop: bool, size: int = 224, scale: int = 256, draft: bool = True):
        self.crop = T.TenCrop(size) if ten_crop else T.CenterCrop(size)
        self.scale = scale
        self.draft = draft

    def __call__(self, image: Image.Image, generator: T.Generator = None):
        width, height = image.size
        pixels = decode_rgb(image, min(width, height) / self.scale if self.draft else 1.0)
        if min(width, height) != self.scale:
            target = T.scaled_size(width, height, self.scale)
            if pixels.shape[-2:] != target[::-1]:
                pixels = T.resize(pixels, *target)
        return self.crop(pixels), NO_DRAWS


NO_DRAWS = torch.empty(0)


class ImageFolder(torch.utils.data.Dataset):
    """Images listed in an index, decoded with PIL and transformed on the fly into
    (uint8 image, colour draws, label) samples.

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

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        index, generator = split_item(item)
        relative, label = self.samples[index]
        path = os.path.join(self.root, relative)
        try:
            with Image.open(path) as image:
                pixels, draws = self.transform(image, generator)
        except DECODE_ERRORS as exc:
            if self.skip_corrupt:
                return None
            raise DataError(f"cannot read image {path}: {exc}") from exc
        return pixels, draws, label


def collate_skipping(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; the last element counts the skipped ones."""
    kept = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    return (*default_collate(kept), skipped)


def train_transform(size: int = 224):
    """The Lua's per-image train transform on a decoded uint8 image (the reference the
    split pipeline is tested against): RandomSizedCrop, ColorJitter 0.4, Lighting 0.1,
    normalise, flip (datasets/imagenet.lua)."""
    return T.Compose(
        [
            T.RandomSizedCrop(size),
            T.ToFloat(),
            T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            T.Lighting(0.1, PCA_EIGVAL, PCA_EIGVEC),
            T.ColorNormalize(*MEANSTD),
            T.HorizontalFlip(0.5),
        ]
    )


def load(
    split: str, data: str, cache_path: str, ten_crop: bool = False, skip_corrupt: bool = False
) -> ImageFolder:
    """The train or val split of a class-per-folder dataset, as uint8 samples."""
    index = cached_index(data, cache_path)
    transform = TrainSample() if split == "train" else ValSample(ten_crop)
    samples = [tuple(sample) for sample in index[split]]
    folder = os.path.join(data, split)
    return ImageFolder(folder, samples, index["classes"], transform, skip_corrupt)


def finish_on(loader, device: torch.device) -> photometric.DeviceFinishing:
    """The loader's uint8 batches finished on `device` with this dataset's constants."""
    constants = {"mean": MEANSTD[0], "std": MEANSTD[1], "eigval": PCA_EIGVAL, "eigvec": PCA_EIGVEC}
    return photometric.DeviceFinishing(loader, device, constants)
