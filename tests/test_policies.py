"""-autoAugment, -randomErasing and the crop flags: torchvision's own transforms on the same
draws, per image, in the folder workers and in the in-memory loader."""

import re

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import datasets
import opts as options
from datasets import decoding, folder_index, folder_samples, policies
from datasets.cifar import ArrayImageDataset
from datasets.erasing import PixelSpace
from datasets.memory import InMemoryLoader, augment_batch
from run import plan


def first_jpeg(jpeg_root) -> str:
    return folder_index.list_images(f"{jpeg_root}/train", ["Zebra", "apple", "banana"])[0][0]


def torchvision_policy(name):
    bilinear = v2.InterpolationMode.BILINEAR
    return {"ta_wide": lambda: v2.TrivialAugmentWide(interpolation=bilinear),
            "ra": lambda: v2.RandAugment(interpolation=bilinear, magnitude=9),
            "augmix": lambda: v2.AugMix(interpolation=bilinear, severity=3),
            "imagenet": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET,
                                               interpolation=bilinear)}[name]()  # fmt: skip


@pytest.mark.parametrize("name", ["ta_wide", "ra", "imagenet", "augmix"])
def test_each_policy_gives_torchvisions_image_on_the_same_draws(name, jpeg_root):
    with Image.open(f"{jpeg_root}/train/{first_jpeg(jpeg_root)}") as image:
        pixels = decoding.decode_rgb(image)[:, :96, :96]
    augment = policies.ImageAugment(name, erasing=0.5, space=folder_samples.FOLDER_SPACE)
    policy, erasing = torchvision_policy(name), v2.RandomErasing(p=0.5, value=(124, 116, 104))
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        expected = policy(pixels)
        torch.manual_seed(seed + 1)
        expected = erasing(expected)
        ours = augment(pixels, seed)
        assert ours.dtype == torch.uint8 and torch.equal(ours, expected)
        changed += not torch.equal(ours, pixels)
    assert changed >= 4  # they do augment


def test_folder_training_samples_are_cropped_flipped_then_augmented(jpeg_root, tmp_path):
    augment = policies.ImageAugment("ta_wide", erasing=1.0, space=folder_samples.FOLDER_SPACE)
    sample = folder_samples.TrainSample(64, draft=False, augment=augment)
    plain = folder_samples.TrainSample(64, draft=False)
    with Image.open(f"{jpeg_root}/train/{first_jpeg(jpeg_root)}") as image:
        pixels, draws = sample(image, torch.Generator().manual_seed(7))
        _, lua_draws = plain(image, torch.Generator().manual_seed(7))
        replay = torch.Generator().manual_seed(7)
        box = plain.crop.crop_box(*image.size, replay)
        flip = datasets.transforms.uniform(0, 1, replay) < 0.5
        seed = int(torch.randint(0, policies.SEED_RANGE, (), generator=replay))
        cropped = plain.crop.apply(decoding.decode_rgb(image), box)
    expected = augment(cropped.flip(-1) if flip else cropped, seed)
    assert torch.equal(pixels, expected)
    assert draws.numel() == 0 and lua_draws.numel() == 9  # the policy replaces the colour steps
    erasing_only = folder_samples.TrainSample(
        64, draft=False, augment=policies.ImageAugment(erasing=1)
    )
    with Image.open(f"{jpeg_root}/train/{first_jpeg(jpeg_root)}") as image:
        assert erasing_only(image, torch.Generator().manual_seed(7))[1].numel() == 9


def test_in_memory_batches_get_the_policy_before_and_erasing_after_normalising():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=generator)
    data = ArrayImageDataset(images, torch.arange(10) % 3, ["a", "b", "c"], None,
                             ((0.5,) * 3, (0.25,) * 3))  # fmt: skip
    augment = policies.ImageAugment("ta_wide", erasing=0.5)
    loader = InMemoryLoader(data, 4, seed=1, train=True, augment=augment)
    loader.set_epoch(2)
    batches = list(loader)
    order, flips, offsets, seeds = loader.draws()
    mean, std = loader.mean, loader.std
    for number, (batch, labels) in enumerate(batches):
        part = slice(4 * number, 4 * number + len(labels))
        index, drawn = order[part], seeds[part].tolist()
        policed = torch.stack(
            [augment.augment(images[i], s) for i, s in zip(index, drawn, strict=True)]
        )
        expected = augment_batch(policed.float(), mean, std, flips[part], offsets[part], 4)
        expected = torch.stack([augment.erase(x, s) for x, s in zip(expected, drawn, strict=True)])
        assert torch.equal(batch, expected)
    plain = InMemoryLoader(data, 4, seed=1, train=True)
    plain.set_epoch(2)
    assert [len(t) for t in plain.draws()] == [10, 10, 10, 0]  # the Lua's draws unchanged
    assert torch.equal(plain.draws()[2], offsets)


def test_the_crop_flags_reach_the_folder_dataset(jpeg_root, tmp_path):
    base = ["-dataset", "imagenet", "-data", jpeg_root, "-gen", str(tmp_path / "gen")]
    parsed = plan.parse([*base, "-trainCrop", "176", "-valResize", "232", "-valCrop", "224"])
    train, val = (
        datasets.create(plan.data_spec(parsed), "train"),
        datasets.create(plan.data_spec(parsed), "val"),
    )
    assert train[(0, 3)][0].shape == (3, 176, 176) and val[0][0].shape == (3, 224, 224)
    assert val.transform.scale == 232
    assert folder_samples.crops_for(224) == folder_samples.Crops(224, 256, 224)  # the Lua's
    assert folder_samples.crops_for(320, val=288) == folder_samples.Crops(320, 329, 288)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-autoAugment", "v1"], "unknown -autoAugment v1 (options: none, ta_wide, ra, imagenet,"),
        (["-randomErasing", "1.5"], "-randomErasing must be in [0, 1], got 1.5"),
        (["-valResize", "200"], "-valResize 200 is smaller than the val crop 224"),
        (["-trainCrop", "16"], "-trainCrop must be at least 32"),
    ],
)
def test_bad_augmentation_values_are_one_usage_error(extra, message, jpeg_root):
    with pytest.raises(options.UsageError, match=re.escape(message)):
        plan.parse(["-dataset", "imagenet", "-data", jpeg_root, *extra])
    with pytest.raises(options.UsageError, match="-trainCrop is for folder datasets"):
        plan.parse(["-dataset", "cifar10", "-trainCrop", "28"])


def test_repeated_augmentation_repeats_each_image_with_its_own_draws():
    sampler = datasets.EpochSampler(10, seed=4, batch_size=4, train=True, repeats=3)
    sampler.set_epoch(2)
    items = list(sampler)
    indices = [index for index, _ in items]
    assert len(items) == 10 and len({seed for _, seed in items}) == 10
    assert indices[0:3] == [indices[0]] * 3 and indices[3:6] == [indices[3]] * 3
    assert len(set(indices)) == 4  # ceil(10 / 3) images
    sampler.set_epoch(2, start=4)  # a resumed epoch yields the rest of the same order
    assert list(sampler) == items[4:]


def test_repeated_copies_go_to_different_processes_of_each_global_batch():
    shares = []
    for rank in range(2):
        sampler = datasets.EpochSampler(16, seed=4, batch_size=8, ranks=(rank, 2),
                                        train=True, repeats=2)  # fmt: skip
        sampler.set_epoch(1)
        shares.append([index for index, _ in sampler])
    for first in (0, 4):  # each process's share of the two global batches
        mine, theirs = shares[0][first : first + 4], shares[1][first : first + 4]
        assert len(set(mine)) == 4 and set(mine) == set(theirs)


def test_the_in_memory_loader_repeats_as_the_sampler_does():
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    data = ArrayImageDataset(images, torch.arange(10), list("abcdefghij"), None,
                             ((0.5,) * 3, (0.25,) * 3))  # fmt: skip
    loader = InMemoryLoader(data, 4, seed=1, train=True, repeats=2)
    labels = torch.cat([labels for _, labels in loader]).tolist()
    assert len(labels) == 10 and labels[0::2] == labels[1::2] and len(set(labels)) == 5


def test_a_jpeg_left_to_the_device_gets_the_same_policy_once_decoded(jpeg_root, tmp_path):
    augment = policies.ImageAugment("ta_wide", erasing=0.5, space=folder_samples.FOLDER_SPACE)
    path = tmp_path / "baseline.jpg"  # a real photo as a baseline JPEG, which nvJPEG takes
    with Image.open(f"{jpeg_root}/train/{first_jpeg(jpeg_root)}") as image:
        image.convert("RGB").save(path, "JPEG", quality=90)
    results = []
    for on_device in (False, True):
        sample = folder_samples.TrainSample(64, draft=False, on_device=on_device, augment=augment)
        with Image.open(path) as image:
            results.append(sample(image, torch.Generator().manual_seed(3))[0])
    in_worker, encoded = results
    assert isinstance(encoded, decoding.Encoded)
    batch, kept = decoding.decode_batch([encoded], torch.device("cpu"))
    assert kept == [0] and torch.equal(batch[0], in_worker)


def test_the_repeated_augmentation_flag_reaches_both_kinds_of_loader(cifar10_root, jpeg_root,
                                                                     tmp_path):  # fmt: skip
    cifar = plan.parse(["-dataset", "cifar10", "-data", cifar10_root, "-repeatedAug", "2",
                           "-gen", str(tmp_path / "c")])  # fmt: skip
    in_memory, val = datasets.create_loaders(plan.data_spec(cifar), torch.device("cpu"))
    assert (in_memory.repeats, val.repeats) == (2, 1)
    folder = plan.parse(["-dataset", "imagenet", "-data", jpeg_root, "-repeatedAug", "3",
                            "-nThreads", "0", "-gen", str(tmp_path / "f")])  # fmt: skip
    train, val = datasets.create_loaders(plan.data_spec(folder), torch.device("cpu"))
    assert (train.sampler.repeats, val.sampler.repeats) == (3, 1)


@pytest.mark.parametrize("name", policies.TIMM_POLICIES)
def test_timms_randaugment_is_timms_on_the_same_draws_and_leaves_the_generators(name):
    """ResNet strikes back's RandAugment: timm's own transform, fed the image's seed through
    Python's and NumPy's generators, which are as they were afterwards."""
    import random

    import numpy as np
    from timm.data.auto_augment import rand_augment_transform
    from torchvision.transforms.v2 import functional as TF

    space = PixelSpace((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)
    ours = policies.ImageAugment(name, 0.0, space)
    theirs = rand_augment_transform(name, {"img_mean": (124, 116, 104)})
    image = torch.randint(0, 256, (3, 48, 40), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)  # fmt: skip
    random.seed(123)
    np.random.seed(7)
    before = random.getstate(), np.random.get_state()[1].copy()
    changed = 0
    for seed in range(12):
        got = ours.augment(image, seed)
        random.seed(seed)
        np.random.seed(seed)
        expected = TF.pil_to_tensor(theirs(TF.to_pil_image(image)))
        assert torch.equal(got, expected), seed
        changed += not torch.equal(got, image)
        random.setstate(before[0])
        np.random.seed(7)
    assert changed >= 6  # two operations of probability 0.5 each: most images change
    ours.augment(image, 99)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
