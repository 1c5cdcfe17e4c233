"""-autoAugment and -randomErasing: torchvision.transforms.v2's augmentation policies and
random erasing, applied one image at a time with draws from that image's own seed.

torchvision draws from the global generator; here each call forks it and seeds it with the
seed the sampler drew for the image at its position in the epoch, so an image gets the same
operations and magnitudes with any number of loader workers and after a resume, and the
global generator is left as it was.
"""

import random

import numpy as np
import torch

from datasets.erasing import BoxErasing, Erasing, PixelSpace

# timm's RandAugment as ResNet strikes back names it (the A1 / A2 and the A3 procedures).
TIMM_POLICIES = ("rand-m7-mstd0.5-inc1", "rand-m6-mstd0.5-inc1")
POLICIES = ("none", "ta_wide", "ra", "imagenet", "augmix", *TIMM_POLICIES)
SEED_RANGE = 2**62


class TimmRandAugment:
    """timm's RandAugment (timm.data.auto_augment, an optional package) on one uint8 C x H x
    W image, as timm's train.py builds it (bilinear; fills with the data's mean colour).
    timm draws from Python's and NumPy's global generators: they are seeded with the image's
    seed for the call, then put back as they were."""

    def __init__(self, name: str, space: PixelSpace):
        from timm.data.auto_augment import rand_augment_transform

        mean = tuple(min(255, round(m)) for m in space.mean)
        fill = mean * 3 if len(mean) == 1 else mean
        self.transform = rand_augment_transform(name, {"img_mean": fill})

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        grey = image.shape[0] == 1
        picture = TF.to_pil_image(image).convert("RGB")
        saved = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            picture = self.transform(picture)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return TF.pil_to_tensor(picture.convert("L") if grey else picture)


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
        if policy in TIMM_POLICIES:
            self.policy = TimmRandAugment(policy, space or PixelSpace((0.0,), (1.0,), True))
        else:
            self.policy = None if policy == "none" else policy_transform(policy)
        spec = erasing if isinstance(erasing, Erasing) else Erasing(erasing)
        self.erasing = make_erasing(spec, space) if spec.probability > 0 else None

    def __bool__(self) -> bool:
        return self.policy is not None or self.erasing is not None

    def augment(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The policy's operations on a uint8 image."""
        if isinstance(self.policy, TimmRandAugment):
            return self.policy(image, seed)
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
