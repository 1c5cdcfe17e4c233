"""Whole-batch augmentation (datasets/memory.py) against the per-image Lua transforms."""

import torch

import datasets
from datasets import transforms as T
from datasets.memory import InMemoryLoader, augment_batch


def reference_image(image, mean, std, flip, y1, x1):
    """The Lua's per-image path with the given draws: normalise, flip, pad 4, crop."""
    out = T.ColorNormalize(mean, std)(image.float())
    if flip:
        out = out.flip(-1)
    out = torch.nn.functional.pad(out, [4] * 4)
    return out[:, y1 : y1 + 32, x1 : x1 + 32]


def test_batch_augmentation_equals_the_per_image_reference(cifar10_root):
    data = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    generator = torch.Generator().manual_seed(0)
    flips = torch.rand(20, generator=generator) < 0.5
    offsets = torch.randint(0, 9, (20, 2), generator=generator)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    batch = augment_batch(data.images.float(), mean, std, flips, offsets, 4)
    for i in range(20):
        expected = reference_image(
            data.images[i], data.mean, data.std, flips[i], *offsets[i].tolist()
        )
        torch.testing.assert_close(batch[i], expected, rtol=0, atol=1e-6)


def test_epoch_draws_have_the_lua_distribution(cifar10_root):
    data = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    data.labels = torch.zeros(20000, dtype=torch.int64)  # only the draws' size matters here
    loader = InMemoryLoader(data, 128, seed=1, train=True)
    order, flips, offsets, seeds = loader.draws()
    assert sorted(order.tolist()) == list(range(20000)) and seeds.numel() == 0
    assert abs(flips.float().mean().item() - 0.5) < 0.02
    counts = torch.bincount(offsets.flatten(), minlength=9)
    assert offsets.min() == 0 and offsets.max() == 8
    assert (counts.float() / counts.sum() - 1 / 9).abs().max() < 0.01


def test_resumed_epoch_yields_the_remaining_batches(cifar10_root):
    data = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    loader = InMemoryLoader(data, 6, seed=4, train=True)
    loader.set_epoch(3)
    full = [(x.clone(), y.clone()) for x, y in loader]
    assert [len(y) for _, y in full] == [6, 6, 6, 2]
    loader.set_epoch(3, start=12)
    rest = list(loader)
    assert len(loader) == len(rest) == 2
    for (a, la), (b, lb) in zip(full[2:], rest, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    loader.set_epoch(3, start=24)  # after the partial last batch
    assert len(loader) == 0 and list(loader) == []
    loader.set_epoch(4)
    assert not torch.equal(next(iter(loader))[1], full[0][1])


def test_validation_batches_are_only_normalised(cifar10_root):
    data = datasets.load("cifar10", "val", data=cifar10_root, gen="unused")
    loader = InMemoryLoader(data, 20, seed=0, train=False)
    images, labels = next(iter(loader))
    for image, label in zip(images, labels, strict=True):
        index = (data.labels == label).nonzero().flatten().tolist()
        assert any(torch.allclose(image, data[i][0]) for i in index)


def test_greyscale_batches_feed_three_channels(fashion_root, tmp_path):
    data = datasets.load("fashionmnist", "train", data=fashion_root, gen=str(tmp_path))
    loader = InMemoryLoader(data, 8, seed=0, train=True)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 28, 28) and torch.equal(images[:, 0], images[:, 2])
