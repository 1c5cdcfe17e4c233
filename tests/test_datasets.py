"""datasets/ against the Lua's data pipeline (datasets/*.lua, transforms.lua), on real images in the real on-disk formats."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets import cifar, folder_samples, imagenet
from datasets import transforms as T
from tests.conftest import labelled_images


def test_cifar10_reads_every_batch_with_its_labels_and_names(cifar10_root, foolbox_data):
    train = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    val = datasets.load("cifar10", "val", data=cifar10_root, gen="unused")
    samples = labelled_images(foolbox_data, "cifar10")
    assert len(train) == 20 and len(val) == 20
    assert train.labels.tolist() == [label for _, label in samples]
    assert train.classes[3] == "cat"
    first = np.asarray(Image.open(samples[0][0]).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(train.images[0], torch.from_numpy(first.copy()))


def test_cifar_validation_is_normalised_on_the_0_255_scale(cifar10_root):
    val = datasets.load(
        "cifar10", "val", data=os.path.join(cifar10_root, "cifar-10-batches-py"), gen=""
    )
    image, label = val[0]
    expected = (
        val.images[0].float() - torch.tensor([125.3, 123.0, 113.9]).view(3, 1, 1)
    ) / torch.tensor([63.0, 62.1, 66.7]).view(3, 1, 1)
    assert image.shape == (3, 32, 32) and label == int(val.labels[0])
    torch.testing.assert_close(image, expected)


def test_cifar100_uses_fine_labels(cifar100_root, foolbox_data):
    train = datasets.load("cifar100", "train", data=cifar100_root, gen="unused")
    val = datasets.load("cifar100", "val", data=cifar100_root, gen="unused")
    fine = [label for _, label in labelled_images(foolbox_data, "cifar100")]
    assert train.labels.tolist() == fine[:12] and val.labels.tolist() == fine
    assert len(train.classes) == 100 and train.classes[0] == "fine0"


def test_cifar_training_transform_pads_with_the_mean_colour(cifar10_root):
    train = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    torch.manual_seed(0)
    padded_pixels_seen = 0
    for _ in range(40):
        image, _ = train[0]
        assert image.shape == (3, 32, 32)
        # Padding is zero after normalisation, i.e. exactly the mean colour of the data.
        zero_columns = (image == 0).all(dim=0).all(dim=0)
        padded_pixels_seen += int(zero_columns.sum())
    assert padded_pixels_seen > 0


def test_random_crop_offsets_are_uniform_over_0_to_8():
    torch.manual_seed(0)
    marker = torch.arange(1, 32 * 32 + 1, dtype=torch.float32).view(1, 32, 32)
    crop = T.RandomCrop(32, 4)
    offsets = []
    for _ in range(4000):
        out = crop(marker)[0]
        y, x = (out > 0).nonzero()[0].tolist()  # first visible source pixel in the crop
        src_y, src_x = divmod(int(out[y, x].item()) - 1, 32)
        offsets.append((src_y - y + 4, src_x - x + 4))  # = the crop's offset in the padded image
    counts = torch.zeros(9, 9)
    for y1, x1 in offsets:
        counts[y1, x1] += 1
    assert counts.min() > 0  # every offset in {0..8}^2, both ends included, occurs
    assert counts.max() < 3 * counts.mean()


def test_center_crop_uses_the_lua_ceil_offsets():
    image = torch.arange(5 * 7, dtype=torch.float32).view(1, 5, 7)
    out = T.CenterCrop(2)(image)
    # ceil((7-2)/2) = 3 and ceil((5-2)/2) = 2; torchvision's round() would give 2 and 2 (or 1).
    assert torch.equal(out, image[:, 2:4, 3:5])
    assert T.center_offsets(257, 300, 224) == (17, 38)


def test_ten_crop_order_is_centre_corners_then_mirrored():
    image = torch.arange(6 * 8, dtype=torch.float32).view(1, 6, 8)
    crops = T.TenCrop(4)(image)
    assert crops.shape == (10, 1, 4, 4)
    assert torch.equal(crops[0], image[:, 1:5, 2:6])
    assert torch.equal(crops[1], image[:, :4, :4]) and torch.equal(crops[2], image[:, :4, 4:])
    assert torch.equal(crops[3], image[:, 2:, :4]) and torch.equal(crops[4], image[:, 2:, 4:])
    assert torch.equal(crops[6], image.flip(-1)[:, :4, :4])


def test_scale_keeps_aspect_and_truncates_like_torch():
    assert T.scaled_size(500, 375, 256) == (341, 256)
    assert T.scaled_size(333, 500, 256) == (256, 384)
    same = torch.zeros(3, 300, 256, dtype=torch.uint8)
    assert T.Scale(256)(same) is same
    assert T.Scale(256)(torch.zeros(3, 375, 500, dtype=torch.uint8)).shape == (3, 256, 341)


def test_random_sized_crop_draws_linear_aspect_ratios_and_swaps():
    torch.manual_seed(0)
    crop = T.RandomSizedCrop(224)
    ratios = []
    for _ in range(4000):
        x1, y1, w, h = crop.crop_box(1000, 1000)
        assert 0 <= x1 <= 1000 - w and 0 <= y1 <= 1000 - h
        ratios.append(w / h)
    ratios = torch.tensor(ratios)
    # Swapping makes w/h and h/w equally likely: the log-ratio is symmetric around 0.
    assert abs(ratios.log().mean().item()) < 0.02
    assert ratios.min() > 0.74 and ratios.max() < 1.35


def test_random_sized_crop_falls_back_to_scale_and_center_crop():
    torch.manual_seed(0)
    crop = T.RandomSizedCrop(224)
    assert crop.crop_box(1000, 10) is None  # no 8%-of-area box with aspect <= 4/3 fits
    out = crop(torch.zeros(3, 10, 1000, dtype=torch.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_color_jitter_does_not_clamp_and_keeps_grey_images_grey():
    torch.manual_seed(0)
    jitter = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    bright = torch.ones(3, 4, 4)
    values = torch.stack([jitter(bright.clone()) for _ in range(50)])
    assert values.max() > 1.0  # the Lua never clamps
    grey = torch.full((3, 4, 4), 0.5)
    out = jitter(grey)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_lighting_adds_the_pca_colour_shift():
    torch.manual_seed(0)
    lighting = T.Lighting(0.1, folder_samples.PCA_EIGVAL, folder_samples.PCA_EIGVEC)
    torch.manual_seed(3)
    alpha = torch.empty(3).normal_(0, 0.1)
    torch.manual_seed(3)
    out = lighting(torch.zeros(3, 2, 2))
    expected = torch.tensor(folder_samples.PCA_EIGVEC) @ (
        alpha * torch.tensor(folder_samples.PCA_EIGVAL)
    )
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_a_folder_dataset_by_name_is_read_as_the_lua_read_it(jpeg_root, tmp_path):
    """datasets.load without a Reading: the Lua's crops, no augmentation, local files."""
    val = datasets.load("imagenet", "val", data=jpeg_root, gen=str(tmp_path))
    image, _, _ = val[0]
    assert val.classes == ["Zebra", "apple", "banana"] and image.shape == (3, 224, 224)


def test_folder_dataset_on_real_jpegs(jpeg_root, tmp_path):
    cache = tmp_path / "gen" / "imagenet.json"
    train = imagenet.load("train", jpeg_root, str(cache))
    val = imagenet.load("val", jpeg_root, str(cache), imagenet.Reading(ten_crop=True))
    assert train.classes == ["Zebra", "apple", "banana"]  # byte order: upper case first
    assert len(train) == 15 and len(val) == 5
    image, draws, label = train[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8 and label == 0
    assert draws.shape == (9,) and sorted(draws[:3].tolist()) == [0, 1, 2]
    crops, no_draws, _ = val[0]
    assert crops.shape == (10, 3, 224, 224) and no_draws.numel() == 0
    assert json.loads(cache.read_text())["basedir"] == jpeg_root


def test_folder_index_is_rebuilt_when_data_changes(jpeg_root, tmp_path):
    cache = str(tmp_path / "imagenet.json")
    imagenet.load("train", jpeg_root, cache)
    other = tmp_path / "other"
    for split in ("train", "val"):
        (other / split / "solo").mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(other / split / "solo" / "a.png")
    rebuilt = imagenet.load("train", str(other), cache)
    assert rebuilt.classes == ["solo"] and len(rebuilt) == 1


def test_folder_index_is_rebuilt_when_images_or_classes_are_added(jpeg_root, tmp_path, capsys):
    data, cache = tmp_path / "data", str(tmp_path / "imagenet.json")
    shutil.copytree(jpeg_root, data)
    before = imagenet.load("train", str(data), cache)
    imagenet.load("train", str(data), cache)
    assert "Generating" not in capsys.readouterr().out.split("saving list")[1]  # cache used
    first = data / "train" / "apple" / sorted(os.listdir(data / "train" / "apple"))[0]
    shutil.copyfile(first, data / "train" / "apple" / "added.JPEG")
    grown = imagenet.load("train", str(data), cache)
    assert len(grown) == len(before) + 1
    assert "image folders changed since" in capsys.readouterr().out
    for split in ("train", "val"):
        shutil.copytree(data / split / "apple", data / split / "cherry")
    assert imagenet.load("val", str(data), cache).classes == ["Zebra", "apple", "banana", "cherry"]


def test_val_class_missing_from_train_is_an_error(tmp_path):
    for split, name in (("train", "cat"), ("val", "dog")):
        (tmp_path / split / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.jpg")
    with pytest.raises(datasets.DataError, match="class not found in train/: dog"):
        imagenet.load("val", str(tmp_path), str(tmp_path / "gen.json"))


def test_flat_validation_folder_says_how_to_sort_it(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "x.jpg")
    (tmp_path / "val").mkdir()
    for name in ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"):
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name, format="JPEG")
    with pytest.raises(datasets.DataError) as error:
        imagenet.load("val", str(tmp_path), str(tmp_path / "gen.json"))
    message = str(error.value)
    assert f"{tmp_path}/val holds 2 images directly, not in class folders" in message
    assert "valprep.sh" in message and "\n" not in message


def test_flat_training_folder_says_to_make_class_folders(tmp_path):
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name)
    with pytest.raises(datasets.DataError, match="holds 3 images directly, not in class folders"):
        imagenet.load("train", str(tmp_path), str(tmp_path / "gen.json"))


def test_images_left_beside_the_class_folders_are_named_in_a_warning(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "stray.jpg")
    val = imagenet.load("val", str(tmp_path), str(tmp_path / "gen.json"))
    assert len(val) == 1
    assert f"warning: 1 images directly in {tmp_path}/val are in no class folder: left out" in (
        capsys.readouterr().out
    )


def test_corrupt_image_names_the_file(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = imagenet.load("train", str(tmp_path), str(tmp_path / "gen.json"))
    with pytest.raises(datasets.DataError, match="broken.jpg"):
        dataset[0]


def test_fashion_mnist_from_gzipped_idx_files(fashion_root, foolbox_data, tmp_path):
    train = datasets.load("fashionmnist", "train", data=fashion_root, gen=str(tmp_path))
    val = datasets.load("fashionmnist", "val", data=fashion_root, gen=str(tmp_path))
    labels = [label for _, label in labelled_images(foolbox_data, "fashionMNIST")]
    assert len(train) == 16 and len(val) == 4
    assert train.labels.tolist() == labels[:16] and train.classes[0] == "T-shirt/top"
    image, _ = train[0]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], image[1])


def test_missing_cifar_files_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(datasets.DataError, match="data_batch_1"):
        datasets.load("cifar10", "train", data=str(tmp_path), gen=str(tmp_path))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, handle)
    with pytest.raises(datasets.DataError, match="refusing to load"):
        cifar.read_batch(str(folder / "test_batch"), "labels", 10)


def epoch_batches(loader, epoch, start=0):
    loader.sampler.set_epoch(epoch, start)
    return [(batch[0].clone(), batch[1].tolist()) for batch in loader]


def test_loaders_repeat_with_a_seed_and_keep_the_last_partial_batch(cifar10_root):
    train = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")

    def two_epochs(seed):
        loader = datasets.make_loader(train, 8, workers=0, seed=seed)
        return [labels for e in (1, 2) for _, labels in epoch_batches(loader, e)]

    first = two_epochs(0)
    assert [len(b) for b in first] == [8, 8, 4] * 2
    assert first == two_epochs(0)
    assert first[:3] != first[3:]  # reshuffled every epoch
    assert first != two_epochs(5)


def test_augmentation_does_not_depend_on_workers_or_history(cifar10_root):
    train = datasets.load("cifar10", "train", data=cifar10_root, gen="unused")
    in_process = datasets.make_loader(train, 6, workers=0, seed=3)
    with_workers = datasets.make_loader(train, 6, workers=2, seed=3)
    reference = epoch_batches(in_process, 2)
    torch.manual_seed(123)  # the global generator plays no part
    for (a, labels_a), (b, labels_b) in zip(reference, epoch_batches(with_workers, 2), strict=True):
        assert labels_a == labels_b and torch.equal(a, b)
    # Resuming epoch 2 after its first batch yields exactly the remaining batches.
    resumed = epoch_batches(in_process, 2, start=6)
    assert len(resumed) == len(reference) - 1
    for (a, labels_a), (b, labels_b) in zip(reference[1:], resumed, strict=True):
        assert labels_a == labels_b and torch.equal(a, b)


def test_epoch_sampler_pairs_every_index_once_with_a_seed():
    sampler = datasets.EpochSampler(10, seed=0)
    sampler.set_epoch(4)
    pairs = list(sampler)
    assert sorted(index for index, _ in pairs) == list(range(10))
    assert len({seed for _, seed in pairs}) == 10
    sampler.set_epoch(4, start=7)
    assert list(sampler) == pairs[7:] and len(sampler) == 3
    sampler.set_epoch(4, start=12)  # resumed after a partial last batch of 10 samples
    assert list(sampler) == [] and len(sampler) == 0


def test_offline_cifar_download_failure_says_where_the_files_go(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(
        datasets.DataError, match=r"cifar-100-python/ \(train, test\).*in -data or in"
    ):
        datasets.load("cifar100", "train", data="", gen=str(tmp_path / "gen"))


def test_offline_fashion_mnist_download_failure_names_the_debian_package(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    from datasets import fashionmnist

    class Offline:
        def __init__(self, root, train, download):
            raise (urllib.error.URLError("no network") if download else RuntimeError("not found"))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    monkeypatch.setattr(fashionmnist, "DEBIAN_DIR", str(tmp_path / "no-debian-files"))
    with pytest.raises(datasets.DataError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashionmnist", "train", data="", gen=str(tmp_path / "gen"))


def test_close_stops_the_workers_after_a_worker_error(tmp_path):
    """Workers ignore SIGTERM (main saves first), so close() must end them explicitly:
    a left-over worker blocks the interpreter's exit after an error."""
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        for i in range(4):
            (tmp_path / split / "cat" / f"{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = imagenet.load("train", str(tmp_path), str(tmp_path / "gen.json"))
    loader = datasets.make_loader(dataset, 2, workers=2, seed=0)
    with pytest.raises(datasets.DataError, match="cannot read image"):
        next(iter(loader))
    workers = list(loader._iterator._workers)
    assert all(worker.is_alive() for worker in workers)
    datasets.close(loader)
    assert not any(worker.is_alive() for worker in workers)


def private_memory_growth_while(read_all) -> int:
    """Bytes of the parent's memory a forked child (as a loader worker is) copies while it
    runs read_all: pages it writes to, reference counts included."""
    import multiprocessing

    def private_dirty() -> int:
        with open("/proc/self/smaps_rollup") as rollup:
            line = next(line for line in rollup if line.startswith("Private_Dirty:"))
        return int(line.split()[1]) * 1024

    def measure(pipe):
        before = private_dirty()
        read_all()
        pipe.send(private_dirty() - before)

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=measure, args=(send,))
    child.start()
    growth = receive.recv()
    child.join()
    return growth


def test_loader_workers_read_the_file_list_without_copying_it():
    entries = [(f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", i % 1000) for i in range(300_000)]
    packed = imagenet.PackedSamples(entries)
    assert len(packed) == 300_000 and packed[123_456] == entries[123_456]
    assert packed[0] == entries[0] and packed[299_999] == entries[299_999]

    def read(table):
        def read_all():
            for i in range(0, len(table), 7):
                table[i]  # as a worker's __getitem__ does, keeping nothing

        return read_all

    # The measurement can tell: reading a list of tuples copies tens of MiB in the child.
    assert private_memory_growth_while(read(entries)) > 10 * 2**20
    assert private_memory_growth_while(read(packed)) < 2**20


def test_packed_samples_keep_non_ascii_names():
    entries = [("café/naïve.jpg", 0), ("日本/写真.png", 1)]
    assert [imagenet.PackedSamples(entries)[i] for i in range(2)] == entries
