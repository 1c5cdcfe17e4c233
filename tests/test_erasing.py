"""-erasingStyle paper | authors: the Random Erasing paper's box (area and aspect uniform) and
fill (random values, or the authors' constant), checked over many draws against the
definition; torchvision's stays -randomErasing's default."""

import json
import math

import pytest
import runs
import torch
from torchvision.transforms import v2

import datasets
from datasets import erasing, policies
from datasets.erasing import BoxErasing, Erasing, PixelSpace

SENTINEL = -1e6  # a pixel value no fill produces: what differs from it was erased
DRAWS = 4000
NORMALISED = PixelSpace((125.3, 123.0, 113.9), (63.0, 62.1, 66.7), True)  # CIFAR-10's


def erased_boxes(eraser, side: int, channels: int = 3):
    """(masks, images) of DRAWS sentinel images of side x side erased by seeds 0.."""
    images = torch.stack(
        [eraser(torch.full((channels, side, side), SENTINEL), seed) for seed in range(DRAWS)]
    )
    return images != SENTINEL, images


def box_sides(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The heights and widths of the erased boxes of images with a box."""
    plane = mask[:, 0]
    return plane.any(2).sum(1), plane.any(1).sum(1)


def test_the_paper_box_has_uniform_area_and_uniform_aspect():
    # An area range where every box fits, so that no draw is redrawn: the plain definition.
    spec = Erasing(1.0, "paper", area=(0.02, 0.2), aspect=(0.3, 1 / 0.3))
    mask, _ = erased_boxes(BoxErasing(spec, NORMALISED), 100)
    assert mask.flatten(1).any(1).all()  # probability 1: every image has a box
    heights, widths = (sides.double() for sides in box_sides(mask))
    area = heights * widths / 100**2
    assert area.min() >= 0.019 and area.max() <= 0.205  # up to the sides' rounding
    quartiles = torch.quantile(area, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    assert torch.allclose(quartiles, torch.tensor([0.065, 0.11, 0.155]).double(), atol=0.006)
    aspect = heights / widths
    # U(0.3, 3.33): mean 1.82 and 23% below 1 (torchvision's log-uniform: 1.26 and 50%).
    assert abs(aspect.mean() - (0.3 + 1 / 0.3) / 2) < 0.05
    assert abs((aspect < 1).double().mean() - 0.7 / (1 / 0.3 - 0.3)) < 0.03


def test_the_paper_setting_on_fashion_mnist_images_fits_every_box_inside():
    spec = erasing.with_box(Erasing(1.0, "paper"))
    assert spec.area == (0.02, 0.4) and spec.aspect == (0.3, 1 / 0.3)
    mask, _ = erased_boxes(BoxErasing(spec, NORMALISED), 28)
    heights, widths = box_sides(mask)
    assert heights.max() < 28 and widths.max() < 28 and heights.min() >= 1
    erased = mask.flatten(1).any(1)
    assert erased.double().mean() > 0.99  # a box that fits is almost always found
    # Placed uniformly where it fits: as many boxes touch the top rows as the bottom ones.
    rows = mask[:, 0].any(2)
    top, bottom = rows[:, 0].double().mean(), rows[:, -1].double().mean()
    assert abs(top - bottom) < 0.03 and top > 0.1


def test_random_fill_is_uniform_over_the_pixel_range_in_each_channel():
    spec = Erasing(1.0, "paper", area=(0.1, 0.2), aspect=(0.5, 2.0))
    mask, images = erased_boxes(BoxErasing(spec, NORMALISED), 32)
    for channel, (mean, std) in enumerate(zip(*NORMALISED[:2], strict=True)):
        values = images[:, channel][mask[:, channel]].double()
        low, high = -mean / std, (255 - mean) / std
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
        assert abs(values.mean() - (low + high) / 2) < 0.01 * (high - low)
        assert abs(values.std() - (high - low) / math.sqrt(12)) < 0.01 * (high - low)
    assert not torch.equal(images[:, 0][mask[:, 0]], images[:, 1][mask[:, 1]])  # per channel


def test_greyscale_images_get_grey_random_boxes_and_uint8_images_whole_values():
    grey = PixelSpace((72.94,) * 3, (90.02,) * 3, True, grey=True)
    mask, images = erased_boxes(BoxErasing(Erasing(1.0, "paper", (0.1, 0.2), (0.5, 2)), grey), 28)
    assert mask.any() and torch.equal(images[:, 0], images[:, 1])
    folder = PixelSpace((124.0, 116.0, 104.0), (58.4, 57.1, 57.4), False)
    eraser = BoxErasing(Erasing(1.0, "paper", (0.1, 0.2), (0.5, 2)), folder)
    pixels = torch.stack([eraser(torch.zeros(3, 32, 32, dtype=torch.uint8), s) for s in range(500)])
    assert pixels.dtype == torch.uint8 and pixels.max() == 255 and pixels.float().mean() > 10


def test_the_authors_fill_is_their_constant():
    spec = erasing.with_box(Erasing(1.0, "authors"))
    _, images = erased_boxes(BoxErasing(spec, NORMALISED), 32)
    for channel, constant in enumerate(erasing.AUTHORS_FILL):
        values = images[:, channel][images[:, channel] != SENTINEL]
        assert values.numel() > 0 and torch.all(values == torch.tensor(constant))
    grey = PixelSpace((72.94,) * 3, (90.02,) * 3, True, grey=True)
    _, images = erased_boxes(BoxErasing(spec, grey), 28)
    assert set(images[images != SENTINEL].unique().tolist()) == {torch.tensor(0.4914).item()}


def test_probability_and_reproducibility_of_a_draw():
    eraser = BoxErasing(erasing.with_box(Erasing(0.5, "paper")), NORMALISED)
    mask, _ = erased_boxes(eraser, 32)
    assert abs(mask.flatten(1).any(1).double().mean() - 0.5) < 0.03
    image = torch.randn(3, 32, 32)
    assert torch.equal(eraser(image, 123), eraser(image.clone(), 123))
    assert not torch.equal(eraser(image, 123), image) or not torch.equal(eraser(image, 7), image)


def test_torchvision_style_is_v2_random_erasing_with_the_given_box():
    image = torch.randn(3, 32, 32)
    spec = Erasing(1.0, "torchvision", area=(0.1, 0.3), aspect=(0.5, 2.0))
    augment = policies.ImageAugment(erasing=spec)
    theirs = v2.RandomErasing(p=1.0, scale=(0.1, 0.3), ratio=(0.5, 2.0), value=0.0)
    for seed in range(20):
        assert torch.equal(augment.erase(image, seed), policies.seeded(theirs, image, seed + 1))
    assert erasing.with_box(Erasing(0.1)) == Erasing(0.1, "torchvision", (0.02, 0.33), (0.3, 3.3))


def test_the_flags_reach_the_loader_and_are_recorded(fashion_root, tmp_path):
    flags = ["-dataset", "fashionmnist", "-data", fashion_root, "-netType", "resnet",
             "-depth", "8", "-batchSize", "8", "-nEpochs", "1", "-save", tmp_path / "run",
             "-randomErasing", "0.5", "-erasingStyle", "paper", "-erasingArea", "0.05,0.3"]  # fmt: skip
    done = runs.main_run(flags)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "run" / "opts.json") as handle:
        recorded = json.load(handle)
    assert recorded["erasingStyle"] == "paper" and recorded["erasingArea"] == [0.05, 0.3]
    spec = datasets.DataSpec("fashionmnist", data=fashion_root, batch_size=8,
                             erasing=Erasing(1.0, "paper", (0.05, 0.3), (0.3, 1 / 0.3)))  # fmt: skip
    train, _ = datasets.create_loaders(spec, torch.device("cpu"))
    assert isinstance(train.augment.erasing, BoxErasing) and train.augment.erasing.space.grey


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-erasingStyle", "papers"], "-erasingStyle"),
        (["-erasingArea", "0.4,0.1"], "invalid range"),
        (["-erasingArea", "0.1"], "invalid range"),
        (["-erasingArea", "0.1,1"], "largest share must be below 1"),
        (["-erasingAspect", "0,3"], "invalid range"),
        (["-recipe", "fast-small", "-data", "/tmp"], "-recipe fast-small is for small-image"),
    ],
)
def test_bad_erasing_flags_are_one_line(flags, message, tmp_path):
    base = ["-dataset", "cifar10", "-save", tmp_path / "run"]
    if "-recipe" in flags:
        base = ["-dataset", "imagenet", "-save", tmp_path / "run"]
    done = runs.main_run([*base, *flags])
    assert done.returncode != 0 and message in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
