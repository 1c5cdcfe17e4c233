"""Whole-batch loading and augmentation for the in-memory datasets (CIFAR, Fashion-MNIST).

The uint8 images stay in one tensor (on the training device when it is a GPU). Each batch
is gathered, converted and augmented as a whole: normalise, flip, zero-pad (the mean
colour, as the Lua pads after normalising) and crop, with the Lua's distribution: flips
with p = 0.5 and crop offsets uniform over 0..2*padding, per image. The epoch's order,
flips and offsets are drawn at once from the (seed, epoch) generator, so an epoch resumed
at batch k yields exactly the batches k+1.. of the uninterrupted run. An augmentation
policy (-autoAugment) runs per image on the uint8 images before all this, and random
erasing per image after, each image drawing from its own seed of the epoch's draws.
"""

import torch
from torch.nn import functional as F

from datasets.policies import SEED_RANGE
from datasets.sampler import dealt, epoch_generator, repeated, shard


def augment_batch(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    flips: torch.Tensor,
    offsets: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Normalise, flip where flips is true, pad, and crop each image at its (y, x) offset."""
    batch, _, height, width = images.shape
    images = (images - mean) / std
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    padded = F.pad(images, [padding] * 4).permute(0, 2, 3, 1)  # B x H' x W' x C
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # B x H
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # B x W
    which = torch.arange(batch, device=images.device).view(-1, 1, 1)
    return padded[which, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


class InMemoryLoader:
    """Iterates (images, labels) batches of an ArrayImageDataset, augmented on `device`
    (training: the Lua's 4-pixel padded random crop and flip, then `augment`), normalised
    with the dataset's mean and std. batch_size is global: of each batch, this process
    (ranks: rank, world) gets its share."""

    PADDING = 4

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        seed: int,
        train: bool,
        device: torch.device | str = "cpu",
        ranks: tuple[int, int] = (0, 1),
        augment=None,
        repeats: int = 1,
    ):
        self.dataset = dataset  # keeps .classes reachable as for a DataLoader
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.padding = self.PADDING if train else 0
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1)
        self.epoch, self.start = 1, 0
        self.rank, self.world = ranks
        self.augment = augment if augment and train else None  # a policies.ImageAugment
        self.repeats = repeats  # repeated augmentation (datasets.sampler.repeated, dealt)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch's order and draws, beginning at sample `start`."""
        self.epoch, self.start = epoch, start

    def shares(self):
        """This rank's positions of each global batch (datasets.sampler.shard)."""
        return shard(
            self.start,
            len(self.labels),
            self.batch_size,
            self.rank,
            self.world,
            whole_batches_only=self.train,
        )

    def __len__(self) -> int:
        return sum(1 for _ in self.shares())

    def draws(self) -> tuple[torch.Tensor, ...]:
        """The epoch's (order, flips, offsets, augmentation seeds), one entry per position
        in the epoch (no seeds when not augmenting: the draws before them are unchanged)."""
        generator = epoch_generator(self.seed, self.epoch)
        size = len(self.labels)
        order = torch.randperm(size, generator=generator)
        order = repeated(order, self.repeats)
        flips = torch.rand(size, generator=generator) < 0.5
        offsets = torch.randint(0, 2 * self.padding + 1, (size, 2), generator=generator)
        seeds = torch.empty(0, dtype=torch.int64)
        if self.augment is not None:
            seeds = torch.randint(0, SEED_RANGE, (size,), generator=generator)
        if self.repeats > 1:
            return tuple(dealt((order, flips, offsets, seeds), self.batch_size, self.world))
        return order, flips, offsets, seeds

    def each_image(self, method, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """method(image, seed) of the augmentation for each image of the batch: the policies
        draw per image, which torchvision does one image at a time."""
        return torch.stack([method(image, seed) for image, seed in zip(images, seeds, strict=True)])

    def __iter__(self):
        order, flips, offsets, seeds = self.draws()
        order, flips, offsets = (t.to(self.device) for t in (order, flips, offsets))
        for share in self.shares():
            part = slice(share.start, share.stop)
            index = order[part]
            images = self.images[index]
            if self.augment is not None:
                images = self.each_image(self.augment.augment, images, seeds[part].tolist())
            images = images.float()
            if images.shape[1] == 1:
                images = images.expand(-1, 3, -1, -1)  # greyscale feeds 3-channel networks
            if not self.train:
                yield (images - self.mean) / self.std, self.labels[index]
                continue
            batch = augment_batch(
                images, self.mean, self.std, flips[part], offsets[part], self.padding
            )
            if self.augment is not None:  # erasing to 0 after normalising: the mean colour
                batch = self.each_image(self.augment.erase, batch, seeds[part].tolist())
            yield batch, self.labels[index]
