"""Random erasing in the three styles -erasingStyle names: torchvision's `v2.RandomErasing`
(-randomErasing's default), the Random Erasing paper's (Zhong et al., AAAI 2020) with
random values, and its authors' code, which fills the box with one constant.

The paper's Algorithm 1 draws the area S_e ~ U(sl, sh) * S and the aspect r_e ~ U(r1, 1/r1)
(uniform, where torchvision draws the aspect's logarithm uniformly), a box of side
sqrt(S_e * r_e) by sqrt(S_e / r_e), and fills it with random values. Its authors' code, which
made the published table, rounds the sides, redraws the area and aspect while the box does
not fit inside the image (up to 100 times), and then places it uniformly where it fits; so
does this module. Each image draws from a generator of its own seed, so a resumed run
erases exactly as the uninterrupted one.
"""

import math
from typing import NamedTuple

import torch

STYLES = ("torchvision", "paper", "authors")
MAX_TRIES = {"torchvision": 10, "paper": 100, "authors": 100}
# The authors' transform writes these constants into the normalised image: the CIFAR-10
# training set's channel means on the 0-1 scale (0.4914 alone for greyscale Fashion-MNIST).
AUTHORS_FILL = (0.4914, 0.4822, 0.4465)


class Erasing(NamedTuple):
    """-randomErasing's probability and box, in -erasingStyle's style."""

    probability: float = 0.0
    style: str = "torchvision"
    area: tuple[float, float] = (0.02, 0.33)  # of the image's area
    aspect: tuple[float, float] = (0.3, 3.3)  # box height / width


# Each style's own box when -erasingArea / -erasingAspect are unset.
DEFAULT_AREA = {"torchvision": (0.02, 0.33), "paper": (0.02, 0.4), "authors": (0.02, 0.4)}
DEFAULT_ASPECT = {"torchvision": (0.3, 3.3), "paper": (0.3, 1 / 0.3), "authors": (0.3, 1 / 0.3)}


class PixelSpace(NamedTuple):
    """Where the erasing writes: per-channel mean and std on the 0-255 scale, and whether
    the image is already normalised with them (in memory) or still 0-255 uint8 (folders)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalised: bool
    grey: bool = False  # one channel shown as three: a random fill is grey too

    def mean_fill(self):
        """The mean colour as the pixels store it: 0 once normalised, else the uint8 mean."""
        return 0.0 if self.normalised else tuple(round(m) for m in self.mean)


def with_box(spec: Erasing, area=None, aspect=None) -> Erasing:
    """spec with the style's own area and aspect ranges where area / aspect are None."""
    return spec._replace(
        area=tuple(area or DEFAULT_AREA[spec.style]),
        aspect=tuple(aspect or DEFAULT_ASPECT[spec.style]),
    )


class BoxErasing:
    """Erase one box of a C x H x W image with probability spec.probability, drawn from the
    image's own seed: the paper's uniform area and aspect, filled with random values
    ('paper') or the authors' constants ('authors')."""

    def __init__(self, spec: Erasing, space: PixelSpace):
        self.spec, self.space = spec, space
        mean, std = (torch.tensor(v, dtype=torch.float64).view(-1, 1, 1) for v in space[:2])
        self.low, self.high = (-mean / std, (255 - mean) / std) if space.normalised else (0, 255)
        constant = torch.tensor(AUTHORS_FILL[: len(space.mean)]).view(-1, 1, 1)
        if space.grey:
            constant = torch.full_like(constant, AUTHORS_FILL[0])
        self.constant = constant if space.normalised else (mean + constant * std).round()

    def box(self, height: int, width: int, generator: torch.Generator):
        """(top, left, box height, box width) of a box that fits, or None after the tries."""
        (area_low, area_high), (aspect_low, aspect_high) = self.spec.area, self.spec.aspect
        for _ in range(MAX_TRIES[self.spec.style]):
            area, aspect = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            area = height * width * (area_low + (area_high - area_low) * area)
            aspect = aspect_low + (aspect_high - aspect_low) * aspect
            box_height = round(math.sqrt(area * aspect))
            box_width = round(math.sqrt(area / aspect))
            if 0 < box_height < height and 0 < box_width < width:
                top = int(torch.randint(0, height - box_height + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - box_width + 1, (1,), generator=generator))
                return top, left, box_height, box_width
        return None

    def fill(self, channels: int, height: int, width: int, generator, dtype) -> torch.Tensor:
        """The values the box is filled with: random over the pixel range, or the constant."""
        if self.spec.style == "authors":
            return self.constant.expand(channels, height, width).to(dtype)
        drawn = 1 if self.space.grey else channels
        if not self.space.normalised:  # whole pixel values, 0-255, as the uint8 image holds
            values = torch.randint(0, 256, (drawn, height, width), generator=generator)
        else:
            uniform = torch.rand(drawn, height, width, generator=generator, dtype=torch.float64)
            values = self.low + (self.high - self.low) * uniform
        return values.expand(channels, height, width).to(dtype)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if torch.rand(1, generator=generator).item() >= self.spec.probability:
            return image
        channels, height, width = image.shape
        found = self.box(height, width, generator)
        if found is None:
            return image
        top, left, box_height, box_width = found
        values = self.fill(channels, box_height, box_width, generator, image.dtype)
        image = image.clone()
        image[:, top : top + box_height, left : left + box_width] = values.to(image.device)
        return image
