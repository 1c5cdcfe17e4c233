"""The Lua's datasets/transforms.lua: the same random draws and the same arithmetic.

Images are C x H x W tensors: uint8 from decoding to the float conversion, floats after.
Every transform is called as transform(x, generator): the
random ones draw from that torch.Generator (None: the global one). The datasets seed one
generator per sample from the run's seed, the epoch and the sample's position, so a run
repeats exactly, whatever the number of loader workers and wherever it was resumed.
Resizing is antialiased bicubic (torchvision's, PIL's filter) instead of Torch7's
non-antialiased kernel.
"""

import math
from collections.abc import Callable, Sequence

import torch

Generator = torch.Generator | None
Transform = Callable[..., torch.Tensor]


def vision():
    """torchvision's v2 functional transforms, imported on first use: importing torchvision
    takes about 2 s (it loads torch._dynamo), which the in-memory datasets never need."""
    from torchvision.transforms.v2 import functional

    return functional


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # the Lua's grayscale, not torchvision's 0.2989


def uniform(low: float, high: float, generator: Generator = None) -> float:
    """torch.uniform(low, high)."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def randint_inclusive(low: int, high: int, generator: Generator = None) -> int:
    """torch.random(low, high): an integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x, generator: Generator = None):
        for transform in self.transforms:
            x = transform(x, generator)
        return x


class ColorNormalize:
    """(x - mean) / std per channel, on whatever scale the constants are given in."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return (image - self.mean) / self.std


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Scale(size)'s output: shorter side = size, the other truncated as Torch does."""
    if width < height:
        return size, int(height / width * size)
    return int(width / height * size), size


def resize(image: torch.Tensor, width: int, height: int, interpolation: str = "bicubic"):
    """Antialiased resize of a C x H x W tensor (uint8 stays uint8), bicubic unless told."""
    TF = vision()
    return TF.resize(
        image, [height, width], interpolation=TF.InterpolationMode(interpolation), antialias=True
    )


class Scale:
    """Resize so that the shorter side is `size` (unchanged if it already is)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        height, width = image.shape[-2:]
        if min(width, height) == self.size:
            return image
        return resize(image, *scaled_size(width, height, self.size))


def center_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """The Lua's CenterCrop offsets: ceil((W - size) / 2), ceil((H - size) / 2)."""
    return math.ceil((width - size) / 2), math.ceil((height - size) / 2)


class CenterCrop:
    """size x size crop at the Lua's (ceil) centre offsets."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        x1, y1 = center_offsets(image.shape[-1], image.shape[-2], self.size)
        return image[..., y1 : y1 + self.size, x1 : x1 + self.size]


class TenCrop:
    """[centre, top-left, top-right, bottom-left, bottom-right] of the image and its mirror."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        s = self.size
        height, width = image.shape[-2:]
        crops = []
        for view in (image, image.flip(-1)):
            crops.append(CenterCrop(s)(view))
            for y, x in ((0, 0), (0, width - s), (height - s, 0), (height - s, width - s)):
                crops.append(view[..., y : y + s, x : x + s])
        return torch.stack(crops)


class RandomCrop:
    """Zero-pad by `padding` (after normalisation: mean-coloured), then a random size crop."""

    def __init__(self, size: int, padding: int = 0):
        self.size = size
        self.padding = padding

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        if self.padding > 0:
            image = torch.nn.functional.pad(image, [self.padding] * 4)
        height, width = image.shape[-2:]
        x1 = randint_inclusive(0, width - self.size, generator)
        y1 = randint_inclusive(0, height - self.size, generator)
        return image[..., y1 : y1 + self.size, x1 : x1 + self.size]


class HorizontalFlip:
    """Mirror the image with probability `prob`."""

    def __init__(self, prob: float):
        self.prob = prob

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return image.flip(-1) if uniform(0, 1, generator) < self.prob else image


class RandomSizedCrop:
    """Inception crop of 8%-100% of the area, aspect ratio linear in [3/4, 4/3], w and h
    swapped half the time, 10 tries, then Scale + CenterCrop; resized to size x size."""

    def __init__(self, size: int):
        self.size = size

    def crop_box(
        self, width: int, height: int, generator: Generator = None
    ) -> tuple[int, int, int, int] | None:
        """(x1, y1, w, h) of the crop, or None when all 10 tries fail."""
        area = width * height
        for _ in range(10):
            target_area = uniform(0.08, 1.0, generator) * area
            aspect_ratio = uniform(3 / 4, 4 / 3, generator)
            w = math.floor(math.sqrt(target_area * aspect_ratio) + 0.5)
            h = math.floor(math.sqrt(target_area / aspect_ratio) + 0.5)
            if uniform(0, 1, generator) < 0.5:
                w, h = h, w
            if h <= height and w <= width:
                y1 = randint_inclusive(0, height - h, generator)
                x1 = randint_inclusive(0, width - w, generator)
                return x1, y1, w, h
        return None

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.apply(image, self.crop_box(image.shape[-1], image.shape[-2], generator))

    def apply(self, image: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
        """Resize box (x1, y1, w, h) of image to size x size; None: Scale + CenterCrop."""
        if box is None:
            return CenterCrop(self.size)(Scale(self.size)(image))
        x1, y1, w, h = box
        size = [self.size, self.size]
        TF = vision()
        bicubic = TF.InterpolationMode.BICUBIC
        return TF.resized_crop(image, y1, x1, h, w, size, interpolation=bicubic, antialias=True)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """1 x H x W luminance with the Lua's weights."""
    r, g, b = GRAY_WEIGHTS
    return r * image[0:1] + g * image[1:2] + b * image[2:3]


def blend(image: torch.Tensor, other: torch.Tensor, alpha: float) -> torch.Tensor:
    """image * alpha + other * (1 - alpha), without clamping."""
    return image * alpha + other * (1 - alpha)


class ColorJitter:
    """Brightness, contrast and saturation jitter in random order, unclamped."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        jitters = [
            (brightness, lambda img: torch.zeros_like(img)),
            (contrast, lambda img: grayscale(img).mean().expand_as(img)),
            (saturation, lambda img: grayscale(img).expand_as(img)),
        ]
        self.jitters = [(var, other) for var, other in jitters if var != 0]

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        for index in torch.randperm(len(self.jitters), generator=generator).tolist():
            var, other = self.jitters[index]
            image = blend(image, other(image), 1.0 + uniform(-var, var, generator))
        return image


class Lighting:
    """AlexNet PCA colour noise: add eigvec @ (alpha * eigval), alpha ~ N(0, alphastd)."""

    def __init__(self, alphastd: float, eigval: Sequence[float], eigvec: Sequence[Sequence[float]]):
        self.alphastd = alphastd
        self.eigval = torch.tensor(eigval)
        self.eigvec = torch.tensor(eigvec)

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.empty(3).normal_(0, self.alphastd, generator=generator)
        rgb = (self.eigvec * alpha.view(1, 3) * self.eigval.view(1, 3)).sum(1)
        return image + rgb.view(3, 1, 1)


class ToFloat:
    """uint8 tensor -> float in [0, 1]."""

    def __call__(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return vision().to_dtype(image, torch.float32, scale=True)
