"""MixUp and CutMix of whole training batches on the training device, as
torchvision.transforms.v2 does them, with draws that depend only on (seed, epoch,
iteration): every process of a distributed run mixes its share of a global batch with the
same choice, lambda and box, as one process would mix the whole batch, and a resumed run
mixes exactly as the uninterrupted one."""

import torch

from datasets.sampler import epoch_generator


class BatchMixing:
    """(images, labels) -> (mixed images, mixed one-hot targets): MixUp with Beta(mixup,
    mixup) or CutMix with Beta(cutmix, cutmix), one of the two per batch with equal
    probability when both are on (torchvision's reference)."""

    def __init__(self, n_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0):
        from torchvision.transforms import v2  # only when mixing: the import takes seconds

        choices = []
        if mixup > 0:
            choices.append(v2.MixUp(alpha=mixup, num_classes=n_classes))
        if cutmix > 0:
            choices.append(v2.CutMix(alpha=cutmix, num_classes=n_classes))
        if not choices:
            raise ValueError("BatchMixing needs mixup > 0 or cutmix > 0")
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.seed = seed

    def seed_of(self, epoch: int, iteration: int) -> int:
        """The seed of the global generator that torchvision's draws for (epoch, iteration)
        are made from."""
        first = int(torch.randint(0, 2**62, (), generator=epoch_generator(self.seed, epoch)))
        return first + iteration

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, iteration: int):
        """Mix one batch with the draws of (epoch, iteration); the global generator is left
        as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed_of(epoch, iteration))  # draws: CPU
            return self.mix(images, labels)
