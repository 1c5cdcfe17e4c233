"""The loader workers' half of the folder datasets' transforms (the Lua's crops and draws,
as uint8), the crop sizes, and the ImageNet constants the device finishes them with."""

from functools import partial
from typing import NamedTuple

import torch
from PIL import Image

from datasets import photometric, policies
from datasets import transforms as T
from datasets.decoding import Encoded, decode_rgb, device_decodable, rescale_box
from datasets.erasing import PixelSpace

MEANSTD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
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


NO_DRAWS = torch.empty(0)


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


def val_scale(crop_size: int) -> int:
    """The short side validation images are resized to before a centre crop of crop_size."""
    return int(crop_size / 0.875)


FOLDER_SPACE = PixelSpace(*(tuple(255 * v for v in part) for part in MEANSTD), False)  # uint8
