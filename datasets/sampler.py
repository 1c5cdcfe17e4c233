"""Sample order and augmentation seeds that depend only on (seed, epoch): exact resume.

The Lua drew a new permutation from the global generator every epoch, so a resumed run
could not repeat it. Here epoch e's order and each sample's augmentation seed are drawn
from a generator seeded with (seed, e); resuming at iteration k of epoch e skips the
first k batches of that same order, and every image gets the same random crop it would
have got, with any number of loader workers.
"""

import signal

import torch
from torch.utils.data import Sampler

SEED_RANGE = 2**62


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from the run's seed and the epoch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def shard(start: int, size: int, batch_size: int, rank: int = 0, world: int = 1, *,
          whole_batches_only: bool = False):  # fmt: skip
    """This process's positions of each global batch of the epoch from position `start`:
    a batch of n is cut in `world` contiguous shares that differ by at most one, so every
    sample is used exactly once. whole_batches_only (distributed training, where every
    process must step together): a last batch too small to give each process a sample is
    dropped."""
    for first in range(start, size, batch_size):
        n = min(batch_size, size - first)
        if whole_batches_only and world > 1 and n < world:
            return
        yield range(first + rank * n // world, first + (rank + 1) * n // world)


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) pairs; call set_epoch before each epoch. With
    world > 1, only this rank's share of each global batch of batch_size (see shard)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, *, batch_size: int = 1,
                 rank: int = 0, world: int = 1, train: bool = False):  # fmt: skip
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.shards = {"batch_size": batch_size, "rank": rank, "world": world,
                       "whole_batches_only": train}  # fmt: skip
        self.epoch = 1
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch's order, beginning at sample `start` (a resumed epoch)."""
        self.epoch = epoch
        self.start = start

    def positions(self):
        """This rank's positions in the epoch's order, from `start` (past the end: none)."""
        for share in shard(self.start, self.size, **self.shards):
            yield from share

    def __len__(self) -> int:
        return sum(len(share) for share in shard(self.start, self.size, **self.shards))

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        if self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        seeds = torch.randint(0, SEED_RANGE, (self.size,), generator=generator)
        for position in self.positions():
            yield int(order[position]), int(seeds[position])


def split_item(item) -> tuple[int, torch.Generator | None]:
    """Dataset index and seeded generator from an (index, seed) pair; a plain index gets None."""
    if isinstance(item, tuple):
        index, seed = item
        return index, torch.Generator().manual_seed(seed)
    return item, None


def ignore_interrupts(_worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM to the main process, which saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
