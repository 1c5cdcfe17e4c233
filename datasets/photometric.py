"""The ImageNet train transform's colour steps done for a whole batch on the training device.

Loader workers decode, crop, resize and flip as uint8 (datasets/imagenet.py) and draw each
image's colour parameters with `draw`, from the same generator and in the same order as the
per-image transforms (ColorJitter, then Lighting); `finish` then converts the uint8 batch to
float and applies ColorJitter, Lighting and the normalisation on the device, as one affine
colour map per image. The result
equals the per-image path of datasets/transforms.py on the same draws (to float rounding).
Flipping before the colour steps changes nothing: they are the same at every pixel position.
"""

from collections.abc import Iterator, Sequence

import torch

from datasets import transforms as T

JITTER = 0.4  # brightness, contrast and saturation, as datasets/imagenet.lua
LIGHTING_STD = 0.1
N_DRAWS = 9  # jitter order (3), jitter factors by step (3), lighting alphas (3)
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def draw(generator: T.Generator = None) -> torch.Tensor:
    """One image's colour draws, consumed exactly as ColorJitter(0.4, 0.4, 0.4) and
    Lighting(0.1) consume them: [order..., factor per step..., alpha...]."""
    order = torch.randperm(3, generator=generator)
    factors = torch.empty(3)
    for step in order.tolist():
        factors[step] = 1.0 + T.uniform(-JITTER, JITTER, generator)
    alpha = torch.empty(3).normal_(0, LIGHTING_STD, generator=generator)
    return torch.cat((order.float(), factors, alpha))


def colour_maps(
    draws: torch.Tensor, channel_means: torch.Tensor, eigval, eigvec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the 3 x 3 matrix A and offset b with ColorJitter then Lighting of an
    image x in [0, 1] equal to A x + b at every pixel. Each blend is affine in x: brightness
    f x; saturation f x + (1 - f) grey(x); contrast f x + (1 - f) mean(grey(x)), where the
    mean of the image so far is A mean(x) + b, from the channel means of the input."""
    batch, device = draws.shape[0], draws.device
    order, factors, alpha = draws[:, :3].long(), draws[:, 3:6], draws[:, 6:9]
    grey = torch.tensor(T.GRAY_WEIGHTS, device=device)
    to_grey = grey.expand(3, 3)  # every output channel gets the grey of the input
    eye = torch.eye(3, device=device)
    matrix, offset = eye.expand(batch, 3, 3), torch.zeros(batch, 3, device=device)
    for position in range(3):
        step = order[:, position, None]
        factor = factors.gather(1, step)[:, :, None]  # B x 1 x 1
        saturation = (step == SATURATION)[:, :, None]
        blend = factor * eye + (1 - factor) * torch.where(saturation, to_grey, 0.0)
        image_mean = (matrix @ channel_means[:, :, None])[:, :, 0] + offset  # B x 3
        grey_mean = (image_mean * grey).sum(1, keepdim=True)  # B x 1
        shift = torch.where(step == CONTRAST, (1 - factor[:, :, 0]) * grey_mean, 0.0)
        matrix = blend @ matrix
        offset = (blend @ offset[:, :, None])[:, :, 0] + shift
    eigval = torch.as_tensor(eigval, device=device)
    eigvec = torch.as_tensor(eigvec, device=device)
    offset = offset + (eigvec * alpha[:, None, :] * eigval).sum(2)
    return matrix, offset


def apply_maps(images: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """matrix @ pixel + offset for every pixel of B x 3 x H x W floats."""
    batch, _, height, width = images.shape
    pixels = torch.baddbmm(offset[:, :, None], matrix, images.reshape(batch, 3, -1))
    return pixels.view(batch, 3, height, width)


def standardise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of ... x 3 x H x W floats."""
    mean = torch.as_tensor(mean, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(std, device=images.device).view(3, 1, 1)
    return (images - mean) / std


class DeviceFinishing:
    """A folder DataLoader of (uint8 images, draws, labels, skipped) batches, yielding
    (float images, labels, skipped) finished on `device`: decoding (when the images are a
    list left encoded), colour steps (when draws are given) and normalisation. Behaves as
    the DataLoader for len, dataset and sampler."""

    def __init__(self, loader, device: torch.device, constants: dict, decode=None):
        self.loader = loader
        self.device = device
        self.constants = constants  # mean, std, eigval, eigvec
        self.decode = decode  # a list of images left encoded -> (uint8 batch, kept positions)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def sampler(self):
        return self.loader.sampler

    def finish(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Float, normalised images on the device; the colour steps when draws are given.
        The colour steps and the normalisation are one affine map per image, so the batch
        is read once to float, once for its channel means and once for the map."""
        c = self.constants
        images = images.to(self.device, non_blocking=True)
        if draws.shape[-1] == 0:
            floats = T.vision().to_dtype(images, torch.float32, scale=True)
            return standardise(floats, c["mean"], c["std"])
        draws = draws.to(self.device, non_blocking=True)
        images = images.float()  # 0..255; the 1 / 255 of ToFloat is folded into the map
        channel_means = images.mean((2, 3)) / 255
        matrix, offset = colour_maps(draws, channel_means, c["eigval"], c["eigvec"])
        mean = torch.as_tensor(c["mean"], device=self.device)
        std = torch.as_tensor(c["std"], device=self.device)
        matrix = matrix / (255 * std[:, None])  # normalising folded in too
        offset = (offset - mean) / std
        return apply_maps(images, matrix, offset)

    def __iter__(self) -> Iterator[tuple]:
        for images, draws, labels, skipped in self.loader:
            if isinstance(images, list):
                images, kept = self.decode(images)
                skipped += len(labels) - len(kept)
                labels, draws = labels[kept], draws[kept]
            if len(labels) == 0:
                yield images, labels, skipped
            else:
                yield self.finish(images, draws), labels, skipped
