"""-autoAugment and -randomErasing: torchvision.transforms.v2's augmentation policies and
random erasing, applied one image at a time with draws from that image's own seed.

torchvision draws from the global generator; here each call forks it and seeds it with the
seed the sampler drew for the image at its position in the epoch, so an image gets the same
operations and magnitudes with any number of loader workers and after a resume, and the
global generator is left as it was.
"""

import torch

from datasets.erasing import BoxErasing, Erasing, PixelSpace

POLICIES = ("none", "ta_wide", "ra", "imagenet", "augmix")
SEED_RANGE = 2**62


def policy_transform(name: str):
    """torchvision's v2 transform for -autoAugment name, as its reference scripts build it
    (bilinear interpolation, RandAugment magnitude 9, AugMix severity 3)."""
    from torchvision.transforms import v2  # only when asked: the import takes seconds

    bilinear = v2.InterpolationMode.BILINEAR
    if name == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if name == "ra":
        return v2.RandAugment(interpolation=bilinear, magnitude=9)
    if name == "augmix":
        return v2.AugMix(interpolation=bilinear, severity=3)
    if name == "imagenet":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    raise ValueError(f"unknown -autoAugment {name} (options: {', '.join(POLICIES)})")


def seeded(transform, image: torch.Tensor, seed: int) -> torch.Tensor:
    """transform(image) with the global generator seeded with `seed` (then restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU one: torch.manual_seed also
        # seeds every accelerator, which costs more than the transform (0.5 ms)
        return transform(image)


class ImageAugment:
    """The policy (None: none), then random erasing of one C x H x W image given with its
    seed: torchvision's (by default a box of 2%-33% of the area, aspect ratio 0.3-3.3, filled
    with the mean colour) or the paper's (datasets.erasing). `space` is how the pixels are
    stored (None: normalised, so the mean colour is 0). The two draw from seeds `seed` and
    `seed + 1`. erasing: an Erasing, or torchvision's probability."""

    def __init__(
        self,
        policy: str = "none",
        erasing: Erasing | float = 0.0,
        space: PixelSpace | None = None,
    ):
        self.policy = None if policy == "none" else policy_transform(policy)
        spec = erasing if isinstance(erasing, Erasing) else Erasing(erasing)
        self.erasing = make_erasing(spec, space) if spec.probability > 0 else None

    def __bool__(self) -> bool:
        return self.policy is not None or self.erasing is not None

    def augment(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The policy's operations on a uint8 image."""
        return image if self.policy is None else seeded(self.policy, image, seed)

    def erase(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """Random erasing of the image (uint8, or normalised floats)."""
        if self.erasing is None:
            return image
        if isinstance(self.erasing, BoxErasing):
            return self.erasing(image, seed + 1)
        return seeded(self.erasing, image, seed + 1)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        return self.erase(self.augment(image, seed), seed)


def make_erasing(spec: Erasing, space: PixelSpace | None):
    """torchvision's v2.RandomErasing (filling with the mean colour) for the torchvision
    style, else the paper's BoxErasing writing into `space`."""
    if spec.style != "torchvision":
        return BoxErasing(spec, space)
    from torchvision.transforms import v2

    fill = space.mean_fill() if space else 0.0
    return v2.RandomErasing(p=spec.probability, scale=spec.area, ratio=spec.aspect, value=fill)
