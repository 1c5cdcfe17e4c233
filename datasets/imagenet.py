"""ImageNet, and any folder laid out as <data>/train/<class>/* and <data>/val/<class>/*.

Classes are the byte-sorted folder names of train/ (class index = position). The file
index is cached as JSON in <gen>/<dataset>.json and rebuilt when -data changes, as the
Lua's imagenet-gen.lua cache was.
"""

import io
import itertools
import json
import os
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate

from datasets import hf, photometric, policies, shards
from datasets import transforms as T
from datasets.cifar import DamagedStorage, DataError
from datasets.erasing import PixelSpace
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
        loose = sum(map(is_image, os.listdir(train_dir)))
        if loose:
            raise flat_folder_error(train_dir, loose)
        raise DataError(f"no class folders in {train_dir}: expected train/<class>/<image>")
    return sorted(names, key=os.fsencode)


def flat_folder_error(split_dir: str, count: int) -> DataError:
    """The error for images lying directly in split_dir, as ImageNet's val/ comes."""
    return DataError(
        f"{split_dir} holds {count} images directly, not in class folders: move each into"
        f" {split_dir}/<class>/ (ImageNet's val/: run valprep.sh of"
        " soumith/imagenetloader.torch there, as the Lua's INSTALL.md does)"
    )


def is_image(name: str) -> bool:
    """Whether a file name has one of the readable image extensions (any case)."""
    return name.lower().endswith(EXTENSIONS)


def list_images(split_dir: str, classes: list[str]) -> list[tuple[str, int]]:
    """(class/file, class index) of every image one level below split_dir, sorted."""
    index = {name: i for i, name in enumerate(classes)}
    samples, loose = [], 0
    irregular = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: os.fsencode(e.name)):
        if not entry.is_dir() or entry.name.startswith("."):
            loose += entry.is_file() and is_image(entry.name)
            continue
        if entry.name not in index:
            raise DataError(f"class not found in train/: {entry.name} (in {split_dir})")
        names, others = image_files_in(entry.path)
        irregular += others
        if not names:
            print(f"warning: no images in {entry.path}")
        for name in sorted(names, key=os.fsencode):
            samples.append((f"{entry.name}/{name}", index[entry.name]))
    if irregular:
        print(
            f"warning: {len(irregular)} entries named as images under {split_dir} are not"
            f" regular files (pipes, devices, folders, broken or looping links; e.g."
            f" {irregular[0]}): left out"
        )
    if loose and not samples:
        raise flat_folder_error(split_dir, loose)
    if not samples:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {split_dir}")
    if loose:
        print(f"warning: {loose} images directly in {split_dir} are in no class folder: left out")
    return samples


def image_files_in(folder: str) -> tuple[list[str], list[str]]:
    """(image file names, paths of other entries with image names) in folder: a pipe or a
    device named *.jpg would block or fail the loader, a folder would fail it."""
    images, others = [], []
    for entry in os.scandir(folder):
        if is_image(entry.name):
            (images if is_regular_file(entry) else others).append(entry.name)
    return images, [os.path.join(folder, name) for name in others]


def is_regular_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a file, or a link to one (a link loop or an entry that
    cannot be looked at is not: left out with the others, not a stop)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def build_index(data: str) -> dict:
    """Classes and image lists of both splits (the Lua's imagenet-gen.lua)."""
    print("=> Generating list of images")
    stamp = folder_stamp(data)  # before listing: a change made meanwhile is seen next time
    classes = list_classes(os.path.join(data, "train"))
    print(" | finding all validation images")
    val = list_images(os.path.join(data, "val"), classes)
    print(" | finding all training images")
    train = list_images(os.path.join(data, "train"), classes)
    return {"basedir": data, "stamp": stamp, "classes": classes, "train": train, "val": val}


def folder_stamp(data: str) -> dict[str, int]:
    """Modification times of train/, val/ and their class folders: a folder's changes when
    an entry is added, removed or renamed in it, so an equal stamp means the same lists."""
    stamp = {}
    for split in ("train", "val"):
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            continue  # the listing says what is missing
        stamp[split] = os.stat(folder).st_mtime_ns
        for entry in os.scandir(folder):
            if entry.is_dir():
                stamp[f"{split}/{entry.name}"] = entry.stat().st_mtime_ns
    return stamp


def read_index(data: str, cache_path: str) -> dict | None:
    """The cached index if it lists data's folders as they are now; else None, and why."""
    if os.path.isdir(cache_path):
        raise DataError(
            f"{cache_path} is a folder, not the image index file; move it away or choose"
            " another -gen"
        )
    try:
        with open(cache_path) as handle:
            index = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        index = None
    if not is_index(index):
        print(f"=> {cache_path} is damaged: rebuilding it")
        return None
    if index["basedir"] != data:
        return None
    if index["stamp"] != folder_stamp(data):
        print(f"=> image folders changed since {cache_path} was built: rebuilding it")
        return None
    return index


def is_index(index) -> bool:
    """Whether index has the form build_index gives (labels in range included)."""
    if not isinstance(index, dict) or not isinstance(index.get("basedir"), str):
        return False
    classes = index.get("classes")
    if not isinstance(index.get("stamp"), dict) or not isinstance(classes, list) or not classes:
        return False
    return all(is_sample_list(index.get(split), len(classes)) for split in ("train", "val"))


def is_sample_list(samples, n_classes: int) -> bool:
    """Whether samples is a list of [relative path, label in 0..n_classes-1]."""
    return isinstance(samples, list) and all(
        isinstance(s, list)
        and len(s) == 2
        and isinstance(s[0], str)
        and type(s[1]) is int
        and 0 <= s[1] < n_classes
        for s in samples
    )


def cached_index(data: str, cache_path: str) -> dict:
    """The index from cache_path, rebuilt (and saved) when missing, damaged, made for
    another -data, or older than a change to the folders (the Lua rebuilt only for another
    -data)."""
    index = read_index(data, cache_path)
    if index is not None:
        return index
    index = build_index(data)
    print(f" | saving list of images to {cache_path}")
    partial = f"{cache_path}.{os.getpid()}.partial"  # ranks may build it at the same time
    try:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        with open(partial, "w") as handle:
            json.dump(index, handle)
        os.replace(partial, cache_path)
    except OSError as exc:
        if os.path.exists(partial):
            os.remove(partial)
        raise DataError(
            f"cannot write the image index {cache_path} ({exc.strerror}); choose a writable"
            " -gen folder"
        ) from None
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


class Encoded(NamedTuple):
    """A JPEG a loader worker left encoded, to be decoded on the training device (nvJPEG on
    CUDA) and then placed: cropped, resized and flipped as the worker planned."""

    path: str
    data: torch.Tensor  # the file's bytes
    place: Callable[[torch.Tensor], torch.Tensor]


def device_decodable(image: Image.Image) -> bool:
    """Whether a device decoder (nvJPEG) decodes this opened image right: a baseline 8-bit
    JPEG in colour (YCbCr) or grey. nvJPEG does not convert CMYK or YCCK (some 22 images
    of ImageNet's train set are CMYK), so those, progressive and 12-bit JPEGs, and every
    other format are decoded by the loader workers."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and getattr(image, "bits", 8) == 8
    )


class FolderSample:
    """Decode (in the worker, or leave a JPEG for the device) and place one image."""

    def __init__(self, draft: bool, on_device: bool):
        self.draft = draft
        self.on_device = on_device

    def decoded(self, image: Image.Image, place, reduce_by: float):
        """place(pixels), or an Encoded JPEG when decoding happens on the device."""
        if self.on_device and device_decodable(image):
            image.fp.seek(0)  # the file, or a shard's bytes: read whole for the device
            data = torch.frombuffer(bytearray(image.fp.read()), dtype=torch.uint8)
            return Encoded(image.filename or "an image of a shard", data, place)
        return place(decode_rgb(image, reduce_by if self.draft else 1.0))


class TrainSample(FolderSample):
    """The loader-worker half of the ImageNet train transform: RandomSizedCrop to uint8
    (decoding small when the crop is shrunk 2x or more), then the colour draws, then the
    flip, in the Lua's draw order; datasets.photometric finishes the batch on the device.
    With `augment`, its seed is drawn last and its policy and erasing follow the flip; a
    policy replaces the Lua's colour steps, as in torchvision's reference recipes."""

    def __init__(
        self,
        size: int = 224,
        draft: bool = True,
        on_device: bool = False,
        augment: policies.ImageAugment | None = None,
    ):
        super().__init__(draft, on_device)
        self.crop = T.RandomSizedCrop(size)
        self.augment = augment if augment else None

    def __call__(self, image: Image.Image, generator: T.Generator = None):
        width, height = image.size
        box = self.crop.crop_box(width, height, generator)
        policy = self.augment is not None and self.augment.policy is not None
        draws = NO_DRAWS if policy else photometric.draw(generator)
        flip = T.uniform(0, 1, generator) < 0.5
        seed = None
        if self.augment is not None:
            seed = int(torch.randint(0, policies.SEED_RANGE, (), generator=generator))
        covered = min(box[2:]) if box else min(width, height)
        place = partial(self.place, box=box, flip=flip, seed=seed, width=width, height=height)
        return self.decoded(image, place, covered / self.crop.size), draws

    def place(
        self, pixels: torch.Tensor, *, box, flip: bool, seed: int | None, width: int, height: int
    ):
        """The planned crop of the width x height original, on pixels of any scale, flipped
        and augmented as drawn."""
        pixels = self.crop.apply(pixels, rescale_box(box, width, height, pixels))
        pixels = pixels.flip(-1) if flip else pixels
        return pixels if seed is None else self.augment(pixels, seed)


class ValSample(FolderSample):
    """The loader-worker half of the ImageNet val transform: Scale 256 and CenterCrop 224
    (or TenCrop) as uint8; normalisation follows on the device."""

    def __init__(
        self,
        ten_crop: bool,
        size: int = 224,
        scale: int = 256,
        draft: bool = True,
        on_device: bool = False,
        interpolation: str = "bicubic",
    ):
        super().__init__(draft, on_device)
        self.crop = T.TenCrop(size) if ten_crop else T.CenterCrop(size)
        self.scale = scale
        self.interpolation = interpolation

    def __call__(self, image: Image.Image, generator: T.Generator = None):
        width, height = image.size
        place = partial(self.place, width=width, height=height)
        return self.decoded(image, place, min(width, height) / self.scale), NO_DRAWS

    def place(self, pixels: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
        """Scale(256) of the width x height original, from pixels of any scale, then crop."""
        if min(width, height) != self.scale:
            target = T.scaled_size(width, height, self.scale)
            if pixels.shape[-2:] != target[::-1]:
                pixels = T.resize(pixels, *target, self.interpolation)
        return self.crop(pixels)


def decode_jpegs(images: list[Encoded], device: torch.device, skip_corrupt: bool) -> list:
    """Decoded RGB pixels on device for each JPEG (TorchCodec; nvJPEG on CUDA), all at
    once, or one by one when that fails: a JPEG the device decoder refuses is decoded by
    PIL instead; an unreadable one is named, or None when skipping."""
    from torchcodec.decoders import decode_jpeg  # only when decoding on the device

    datas = [image.data for image in images]
    try:
        return decode_jpeg(datas, mode="RGB", device=device)
    except RuntimeError:
        pass
    decoded = []
    for image in images:
        try:
            decoded.append(decode_jpeg(image.data, mode="RGB", device=device))
        except RuntimeError:
            decoded.append(decoded_by_pil(image, device, skip_corrupt))
    return decoded


def decoded_by_pil(image: Encoded, device: torch.device, skip_corrupt: bool):
    """An encoded JPEG decoded by PIL and moved to device; None when unreadable and
    skipping, else DataError naming it."""
    try:
        with Image.open(io.BytesIO(image.data.numpy().tobytes())) as opened:
            return decode_rgb(opened).to(device)
    except DECODE_ERRORS as exc:
        if not skip_corrupt:
            raise DataError(f"cannot read image {image.path}: {exc}") from None
        return None


def decode_batch(images: list, device: torch.device, skip_corrupt: bool = False):
    """A collated list of Encoded JPEGs and worker-decoded tensors as one uint8 batch on
    device, and the positions kept (an unreadable JPEG is dropped when skipping)."""
    jpegs = [image for image in images if isinstance(image, Encoded)]
    decoded = iter(decode_jpegs(jpegs, device, skip_corrupt) if jpegs else [])
    batch, kept = [], []
    for position, image in enumerate(images):
        if isinstance(image, Encoded):
            pixels = next(decoded)
            if pixels is None:
                continue
            batch.append(image.place(pixels))
        else:
            batch.append(image.to(device, non_blocking=True))
        kept.append(position)
    return (torch.stack(batch) if batch else torch.empty(0)), kept


def check_device_decoding(device: torch.device) -> None:
    """Decode a tiny JPEG on device, or raise DataError saying why it cannot."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError as exc:
        raise DataError(
            f"-decodeOnDevice true needs TorchCodec ({exc}): pip install torchcodec, or run"
            " without it"
        ) from None
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "JPEG")
    try:
        decode_jpeg(tiny.getvalue(), device=device)
    except (RuntimeError, ValueError) as exc:
        raise DataError(
            f"-decodeOnDevice true: TorchCodec cannot decode JPEGs on {device} ({exc});"
            " run without it"
        ) from None


NO_DRAWS = torch.empty(0)


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


class Crops(NamedTuple):
    """Side of the training crop, short side validation images are resized to, side of
    their centre crop (the Lua's 224 / 256 / 224), and the resize's interpolation."""

    train: int = 224
    val_resize: int = 256
    val: int = 224
    val_interpolation: str = "bicubic"


LUA_CROPS = Crops()


def crops_for(
    crop_size: int = 224,
    train: int = 0,
    val_resize: int = 0,
    val: int = 0,
    val_interpolation: str = "bicubic",
) -> Crops:
    """-cropSize for train and val crops (val resized to it / 0.875 first), each overridden
    by -trainCrop, -valResize or -valCrop when given (not 0)."""
    val = val or crop_size
    return Crops(train or crop_size, val_resize or val_scale(val), val, val_interpolation)


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


def load(
    split: str,
    data: str,
    cache_path: str,
    ten_crop: bool = False,
    skip_corrupt: bool = False,
    decode_on_device: bool = False,
    crops: Crops = LUA_CROPS,
    augment: policies.ImageAugment | None = None,
    storage: "Storage" = None,
) -> ImageFolder:
    """The train or val split of a class-per-folder dataset (or its tar shards, or Hugging
    Face parquet / Arrow files, read as `storage` says), as uint8 samples (JPEGs left
    encoded with decode_on_device) cropped as `crops` say; training images also augmented
    by `augment` (-autoAugment, -randomErasing) when given."""
    on_device = {"on_device": decode_on_device}
    if split == "train":
        transform = TrainSample(crops.train, augment=augment, **on_device)
    else:
        transform = ValSample(
            ten_crop,
            crops.val,
            crops.val_resize,
            **on_device,
            interpolation=crops.val_interpolation,
        )
    storage = storage or LOCAL
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
    return ImageFolder(root, samples, classes, transform, skip_corrupt)


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


def check_split_folders(data: str) -> None:
    """A DataError naming train/ or val/ when -data lacks it."""
    for split in ("train", "val"):
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            raise DataError(
                f"ImageNet missing `{split}` directory: {folder} (class folders, tar shards"
                " or Hugging Face parquet files: see docs/data.md)"
            )


def val_scale(crop_size: int) -> int:
    """The short side validation images are resized to before a centre crop of crop_size."""
    return int(crop_size / 0.875)


FOLDER_SPACE = PixelSpace(*(tuple(255 * v for v in part) for part in MEANSTD), False)  # uint8


def finish_on(loader, device, skip_corrupt: bool = False) -> photometric.DeviceFinishing:
    """The loader's uint8 batches (JPEGs decoded first when left encoded) finished on
    `device` with this dataset's constants."""
    constants = {"mean": MEANSTD[0], "std": MEANSTD[1], "eigval": PCA_EIGVAL, "eigvec": PCA_EIGVEC}
    decode = partial(decode_batch, device=torch.device(device), skip_corrupt=skip_corrupt)
    return photometric.DeviceFinishing(loader, device, constants, decode)
