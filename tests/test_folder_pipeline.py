"""The folder (ImageNet) input pipeline: uint8 crops from loader workers, colour steps and
normalisation on the device (datasets/photometric.py), JPEG draft decoding."""

import os
import shutil

import pytest
import torch
from PIL import Image

import datasets
from datasets import decoding, folder_samples, imagenet, photometric
from datasets import transforms as T

SEEDS = range(8)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def real_jpegs(jpeg_root: str) -> list[str]:
    folder = os.path.join(jpeg_root, "train")
    return sorted(
        os.path.join(folder, c, name) for c in os.listdir(folder) for name in os.listdir(os.path.join(folder, c))
    )  # fmt: skip


def finisher(device="cpu") -> photometric.DeviceFinishing:
    return imagenet.finish_on(None, torch.device(device))


def test_batch_finishing_equals_the_per_image_lua_transform(jpeg_root):
    """Same generator seed: workers' uint8 crop + draws, finished as a batch, against the
    per-image ColorJitter / Lighting / normalise / flip of datasets/transforms.py."""
    paths = real_jpegs(jpeg_root)[: len(SEEDS)]
    worker = folder_samples.TrainSample(draft=False)
    reference = folder_samples.train_transform()
    crops, draws, expected = [], [], []
    for seed, path in zip(SEEDS, paths, strict=True):
        with Image.open(path) as image:
            pixels, drawn = worker(image, generator(seed))
        crops.append(pixels)
        draws.append(drawn)
        with Image.open(path) as image:
            expected.append(reference(decoding.decode_rgb(image), generator(seed)))
    finished = finisher().finish(torch.stack(crops), torch.stack(draws))
    torch.testing.assert_close(finished, torch.stack(expected), atol=1e-5, rtol=0)


def test_every_jitter_order_and_flip_occurs_in_the_draws():
    orders, flips = set(), 0
    worker = folder_samples.TrainSample(draft=False)
    image = Image.new("RGB", (300, 300), (200, 20, 20))
    image.paste((20, 20, 200), (0, 0, 150, 300))  # left half blue: a flip is visible
    for seed in range(200):
        pixels, drawn = worker(image, generator(seed))
        orders.add(tuple(drawn[:3].int().tolist()))
        flips += int(pixels[2, 112, 5] < 100)  # red at the left edge: mirrored
    assert len(orders) == 6
    assert 70 < flips < 130


def test_validation_batches_are_normalised_on_the_device(jpeg_root):
    val = folder_samples.ValSample(ten_crop=False, draft=False)
    path = real_jpegs(jpeg_root)[0]
    with Image.open(path) as image:
        pixels, no_draws = val(image)
    finished = finisher().finish(pixels[None], no_draws[None])
    mean = torch.tensor(folder_samples.MEANSTD[0]).view(3, 1, 1)
    std = torch.tensor(folder_samples.MEANSTD[1]).view(3, 1, 1)
    torch.testing.assert_close(finished[0], (pixels / 255 - mean) / std)


def test_draft_decoding_shrinks_large_jpegs_and_keeps_the_picture(foolbox_data):
    path = os.path.join(foolbox_data, "imagenet_10_541.jpg")  # 1024 x 683
    with Image.open(path) as image:
        full = decoding.decode_rgb(image)
    for reduce_by, shape in ((1.9, (683, 1024)), (2.0, (342, 512)), (4.5, (171, 256))):
        with Image.open(path) as image:
            assert decoding.decode_rgb(image, reduce_by).shape[-2:] == shape
    with Image.open(path) as image:
        quarter = decoding.decode_rgb(image, 4.0).float()
    shrunk = torch.nn.functional.interpolate(
        full[None].float(), size=quarter.shape[-2:], mode="area"
    )
    assert (shrunk[0] - quarter).abs().mean() < 4  # of 255: the same picture, 4x smaller


@pytest.mark.parametrize("ten_crop", [False, True])
def test_drafted_validation_crops_match_full_decoding(foolbox_data, ten_crop):
    path = os.path.join(foolbox_data, "imagenet_10_541.jpg")
    crops = []
    for draft in (False, True):
        with Image.open(path) as image:
            crops.append(folder_samples.ValSample(ten_crop, draft=draft)(image)[0].float())
    assert crops[0].shape == crops[1].shape == ((10, 3, 224, 224) if ten_crop else (3, 224, 224))
    assert (crops[0] - crops[1]).abs().mean() < 4


def test_drafted_training_crops_match_full_decoding_of_the_same_region(foolbox_data):
    """Draft decoding may move a crop's edges by up to half a reduced pixel (a crop offset
    the random draw could have given anyway); over the region it covers, the picture
    matches full decoding."""
    path = os.path.join(foolbox_data, "imagenet_10_541.jpg")  # 1024 x 683
    crop, drafted = T.RandomSizedCrop(224), 0
    with Image.open(path) as image:
        full = decoding.decode_rgb(image)
    for seed in range(20):
        box = crop.crop_box(1024, 683, generator(seed))
        with Image.open(path) as image:
            small = decoding.decode_rgb(image, min(box[2:]) / 224 if box else 1.0)
        if small.shape == full.shape:
            continue
        drafted += 1
        reduced = decoding.rescale_box(box, 1024, 683, small)
        scales = (small.shape[-1] / 1024, small.shape[-2] / 683) * 2
        covered = tuple(round(v / s) for v, s in zip(reduced, scales, strict=True))
        assert max(abs(a - b) for a, b in zip(covered, box, strict=True)) <= 2
        difference = crop.apply(full, covered).float() - crop.apply(small, reduced).float()
        assert difference.abs().mean() < 5  # of 255
        with Image.open(path) as image:
            pixels, _ = folder_samples.TrainSample()(image, generator(seed))
        with Image.open(path) as image:
            unflipped, _ = folder_samples.TrainSample(draft=False)(image, generator(seed))
        assert (pixels.float() - unflipped.float()).abs().mean() < 20  # same flip, same draws
    assert drafted >= 5


def test_the_loader_yields_finished_float_batches_and_counts_skips(jpeg_root, tmp_path):
    dataset = imagenet.load("train", jpeg_root, str(tmp_path / "gen.json"))
    loader = imagenet.finish_on(datasets.make_loader(dataset, 4, workers=0, seed=1), "cpu")
    datasets.set_epoch(loader, 1)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    images, labels, skipped = batches[0]
    assert images.dtype == torch.float32 and images.shape == (4, 3, 224, 224)
    assert labels.dtype == torch.int64 and skipped == 0


def epoch_of(jpeg_root, tmp_path, split, decode_on_device, skip_corrupt=False):
    dataset = imagenet.load(split, jpeg_root, str(tmp_path / "gen.json"), imagenet.Reading(
        skip_corrupt=skip_corrupt, decode_on_device=decode_on_device))  # fmt: skip
    dataset.transform.draft = False  # the device decodes at full size; workers the same here
    loader = datasets.make_loader(dataset, 4, workers=0, seed=5, train=split == "train")
    finished = imagenet.finish_on(loader, "cpu", skip_corrupt)
    datasets.set_epoch(finished, 2)
    return list(finished)


@pytest.mark.parametrize("split", ["train", "val"])
def test_decoding_on_the_device_gives_the_workers_batches(jpeg_root, tmp_path, split):
    """-decodeOnDevice: workers send JPEG bytes and a crop plan; the device decodes
    (TorchCodec's decode_jpeg, here on the CPU) and places: the same batches as decoding
    in the workers, to the decoders' rounding."""
    on_device = epoch_of(jpeg_root, tmp_path, split, True)
    in_workers = epoch_of(jpeg_root, tmp_path, split, False)
    assert len(on_device) == len(in_workers) > 1
    for (a, labels_a, _), (b, labels_b, _) in zip(on_device, in_workers, strict=True):
        assert torch.equal(labels_a, labels_b) and a.shape == b.shape
        assert (a - b).abs().mean() < 0.02  # normalised units: about 1/255 of a pixel


def test_an_unreadable_jpeg_on_the_device_is_named_or_skipped(jpeg_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(jpeg_root, root)
    victim = sorted((root / "train" / "apple").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:700])  # the header reads, the pixels do not
    with pytest.raises(datasets.DataError, match=victim.name):
        epoch_of(str(root), tmp_path, "train", True)
    batches = epoch_of(str(root), tmp_path, "train", True, skip_corrupt=True)
    assert sum(skipped for *_, skipped in batches) == 1
    assert sum(len(labels) for _, labels, _ in batches) == 15 - 1


def test_device_decoding_is_checked_before_training():
    decoding.check_device_decoding(torch.device("cpu"))  # TorchCodec decodes on the CPU
    if torch.cuda.is_available():
        decoding.check_device_decoding(torch.device("cuda"))
    else:
        with pytest.raises(datasets.DataError, match="cannot decode JPEGs on cuda"):
            decoding.check_device_decoding(torch.device("cuda"))


@pytest.mark.parametrize(
    ("mode", "options", "left_encoded"),
    [("RGB", {}, True), ("L", {}, True), ("CMYK", {}, False),
     ("RGB", {"progressive": True}, False)],
)  # fmt: skip
def test_only_jpegs_that_the_device_decodes_right_are_left_to_it(tmp_path, mode, options,
                                                                 left_encoded):  # fmt: skip
    """nvJPEG does not convert CMYK (ImageNet's train set has about 22 such JPEGs): those,
    and progressive JPEGs, are decoded by the workers, the same as without the flag."""
    path = tmp_path / "image.jpg"
    Image.new(mode, (40, 30), (30, 120, 200, 10)[: len(mode)] if mode != "L" else 90).save(
        path, "JPEG", **options
    )
    with Image.open(path) as image:
        sample, _ = folder_samples.ValSample(False, size=16, scale=20, on_device=True)(image)
    assert isinstance(sample, decoding.Encoded) == left_encoded
    if not left_encoded:
        with Image.open(path) as image:
            in_worker, _ = folder_samples.ValSample(False, size=16, scale=20, draft=False)(image)
        assert torch.equal(sample, in_worker)


def test_a_crop_size_other_than_224_crops_train_and_val_to_it(jpeg_root, tmp_path):
    """-cropSize 256 (ResNeSt-101's): 256 x 256 crops; val resized to 292 (256 / 0.875) first."""
    crops = folder_samples.crops_for(256)
    train = imagenet.load(
        "train", jpeg_root, str(tmp_path / "gen.json"), imagenet.Reading(crops=crops)
    )
    val = imagenet.load("val", jpeg_root, str(tmp_path / "gen.json"), imagenet.Reading(crops=crops))
    assert train[(0, 7)][0].shape == val[0][0].shape == (3, 256, 256)
    assert (val.transform.scale, folder_samples.val_scale(224)) == (292, 256)
    from run import plan

    parsed = plan.parse(["-dataset", "imagenet", "-data", jpeg_root, "-cropSize", "320",
                            "-gen", str(tmp_path / "gen")])  # fmt: skip
    assert datasets.create(plan.data_spec(parsed), "val")[0][0].shape == (
        3,
        320,
        320,
    )  # the flag reaches it
