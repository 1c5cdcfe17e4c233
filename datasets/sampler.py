"""Sample order and augmentation seeds that depend only on (seed, epoch): exact resume.

The Lua drew a new permutation from the global generator every epoch, so a resumed run
could not repeat it. Here epoch e's order and each sample's augmentation seed are drawn
from a generator seeded with (seed, e); resuming at iteration k of epoch e skips the
first k batches of that same order, and every image gets the same random crop it would
have got, with any number of loader workers.
"""

import signal
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler

SEED_RANGE = 2**62


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from the run's seed and the epoch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def share(n: int, rank: int, world: int) -> range:
    """The positions of a batch of n that process `rank` of `world` takes: the batch cut in
    `world` contiguous shares that differ by at most one."""
    return range(rank * n // world, (rank + 1) * n // world)


def shard(
    start: int,
    size: int,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    *,
    whole_batches_only: bool = False,
):
    """This process's positions of each global batch of the epoch from position `start`:
    a batch of n is cut in `world` contiguous shares that differ by at most one, so every
    sample is used exactly once. whole_batches_only (distributed training, where every
    process must step together): a last batch too small to give each process a sample is
    dropped."""
    for first in range(start, size, batch_size):
        n = min(batch_size, size - first)
        if whole_batches_only and world > 1 and n < world:
            return
        part = share(n, rank, world)
        yield range(first + part.start, first + part.stop)


def repeated(order: torch.Tensor, repeats: int) -> torch.Tensor:
    """Repeated augmentation: the epoch's order with each of its first ceil(N / repeats)
    samples `repeats` times in a row, N positions in all; each position keeps its own
    augmentation draws."""
    if repeats == 1:
        return order
    return order[: -(-len(order) // repeats)].repeat_interleave(repeats)[: len(order)]


def dealt(per_position: Sequence[torch.Tensor], batch_size: int, world: int) -> list[torch.Tensor]:
    """Each tensor of per-position values (the first one full, an empty one stays empty)
    with the positions of every global batch dealt round-robin over the `world` processes'
    shares: the copies of a repeated image go to different processes (as torchvision's
    RASampler spreads them over GPUs), and a global batch holds the same (sample, draws)
    pairs as in one process."""
    if world == 1:
        return list(per_position)
    size, positions = len(per_position[0]), []
    for first in range(0, size, batch_size):
        positions += deal(list(range(first, min(first + batch_size, size))), world)
    return [values[positions] if values.numel() else values for values in per_position]


def deal(batch: list[int], world: int) -> list[int]:
    """batch's items dealt round-robin into the `world` shares share() cuts it in, shares
    concatenated."""
    capacity = [len(share(len(batch), r, world)) for r in range(world)]
    hands, rank = [[] for _ in range(world)], 0
    for item in batch:
        while len(hands[rank]) == capacity[rank]:
            rank = (rank + 1) % world
        hands[rank].append(item)
        rank = (rank + 1) % world
    return [item for hand in hands for item in hand]


def grouped_order(blocks: torch.Tensor, window: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of the samples that keeps reads local, for data read a block at a time
    (blocks: their lengths, samples of a block consecutive): the blocks in a random order,
    and the samples shuffled within each run of blocks that holds `window` samples (the
    last run may hold fewer). Only those blocks need to be in memory at once."""
    starts = (torch.cumsum(blocks, 0) - blocks).tolist()
    lengths = blocks.tolist()
    runs, run, held = [], [], 0
    for block in torch.randperm(len(lengths), generator=generator).tolist():
        run.append(torch.arange(starts[block], starts[block] + lengths[block]))
        held += lengths[block]
        if held >= window:
            runs.append(torch.cat(run))
            run, held = [], 0
    runs += [torch.cat(run)] if run else []
    return torch.cat([r[torch.randperm(len(r), generator=generator)] for r in runs])


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) pairs; call set_epoch before each epoch. With
    ranks = (rank, world), world > 1: only this rank's share of each global batch of
    batch_size (see shard). grouping: {"blocks": sizes, "window": n} for data read a block
    at a time (grouped_order), or none."""

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        *,
        batch_size: int = 1,
        ranks: tuple[int, int] = (0, 1),
        train: bool = False,
        repeats: int = 1,
        grouping: dict | None = None,
    ):
        self.size = size
        grouping = grouping or {}
        self.blocks, self.window = grouping.get("blocks"), grouping.get("window", 0)
        self.repeats = repeats  # repeated augmentation (see repeated)
        self.seed = seed
        self.shuffle = shuffle
        self.shards = {
            "batch_size": batch_size,
            "rank": ranks[0],
            "world": ranks[1],
            "whole_batches_only": train,
        }
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
        if self.shuffle and self.blocks is not None:
            order = grouped_order(self.blocks, self.window, generator)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        order = repeated(order, self.repeats)
        seeds = torch.randint(0, SEED_RANGE, (self.size,), generator=generator)
        if self.repeats > 1:
            order, seeds = dealt((order, seeds), self.shards["batch_size"], self.shards["world"])
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
