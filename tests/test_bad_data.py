"""Damaged or foreign data files: one DataError naming the file and what is wrong, found
before training; valid files written by other Pythons and numpy versions are read."""

import gzip
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import runs
import torch
from conftest import labelled_images, load_script, planar_rows, write_idx, write_pickle
from test_cli import run_main, small_cifar_args

import datasets
from datasets import imagenet


@pytest.fixture
def cifar_copy(cifar10_root, tmp_path):
    """A writable copy of the CIFAR-10 sample: (root, its pickle folder)."""
    root = tmp_path / "cifar"
    shutil.copytree(cifar10_root, root)
    return root, root / "cifar-10-batches-py"


def load_cifar(root):
    return datasets.load("cifar10", "train", data=str(root), gen="unused")


ROWS = np.zeros((4, 3072), dtype=np.uint8)
BAD_BATCHES = [
    ({b"data": ROWS.reshape(4, 3, 32, 32), b"labels": [0] * 4}, "expected N x 3072 uint8"),
    ({b"data": ROWS[:, :100], b"labels": [0] * 4}, "'data' is (4, 100)"),
    ({b"data": ROWS.astype(np.float32), b"labels": [0] * 4}, "torch.float32"),
    ({b"data": None, b"labels": [0] * 4}, "is not an array of numbers"),
    ({b"data": ROWS, b"labels": [0] * 5}, "has 5 labels for 4 images"),
    ({b"data": ROWS, b"labels": [0, 1, 10, 2]}, "1 labels outside 0..9 (the first: 10)"),
    ({b"data": ROWS, b"labels": [-1, 0, 0, 0]}, "(the first: -1)"),
    ({b"data": ROWS, b"labels": [-100] * 4}, "4 labels outside 0..9"),
    ({b"data": ROWS}, "has no 'labels' entry"),
    ([ROWS, [0] * 4], "holds a list, not a CIFAR dict"),
]


@pytest.mark.parametrize(("content", "message"), BAD_BATCHES)
def test_a_malformed_cifar_batch_is_named_with_what_is_wrong(cifar_copy, content, message):
    root, folder = cifar_copy
    write_pickle(folder / "data_batch_3", content)
    with pytest.raises(datasets.DataError) as caught:
        load_cifar(root)
    assert str(folder / "data_batch_3") in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "damaged or not a pickle"), (b"\x80\x02}q\x00(X", "truncated"),
     (b"garbage that is not a pickle", "cannot read")],
)  # fmt: skip
def test_an_empty_truncated_or_broken_file_is_named(cifar_copy, raw, message):
    root, folder = cifar_copy
    for name in ("data_batch_2", "batches.meta"):
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(raw)
        with pytest.raises(datasets.DataError, match=message) as caught:
            load_cifar(root)
        assert str(folder / name) in str(caught.value)
        (folder / name).write_bytes(original)


def test_a_meta_file_without_names_is_named(cifar_copy):
    root, folder = cifar_copy
    write_pickle(folder / "batches.meta", {b"label_names": [b"one", b"two"]})
    with pytest.raises(datasets.DataError, match="is not a list of 10 class names"):
        load_cifar(root)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_python3_pickles_with_str_keys_and_numpy2_arrays_are_read(cifar_copy, foolbox_data,
                                                                   protocol):  # fmt: skip
    root, folder = cifar_copy
    samples = labelled_images(foolbox_data, "cifar10")
    rows = planar_rows([p for p, _ in samples])
    labels = np.array([label for _, label in samples], dtype=np.int64)  # numpy scalars
    for i in range(5):
        part = slice(4 * i, 4 * i + 4)
        with open(folder / f"data_batch_{i + 1}", "wb") as handle:
            pickle.dump({"data": rows[part], "labels": list(labels[part])}, handle,
                        protocol=protocol)  # fmt: skip
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names}, handle, protocol=protocol)
    train = load_cifar(root)
    assert train.labels.tolist() == labels.tolist() and train.classes == names
    assert torch.equal(train.images.reshape(20, -1), torch.from_numpy(rows))


def test_code_in_a_protocol_5_pickle_is_still_refused(cifar_copy):
    root, folder = cifar_copy

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({"data": Exploit(), "labels": [0]}, handle, protocol=5)
    with pytest.raises(datasets.DataError, match="refusing to load posix.system"):
        load_cifar(root)


def test_a_bad_label_stops_main_before_any_file_is_written(cifar_copy, tmp_path):
    root, folder = cifar_copy
    content = pickle.load(open(folder / "test_batch", "rb"))
    content[b"labels"][7] = 10
    write_pickle(folder / "test_batch", content)
    done = run_main(*small_cifar_args(str(root), tmp_path / "save", "-nEpochs 1"))
    assert done.returncode == 2
    assert done.stderr == (f"error: {folder / 'test_batch'} has 1 labels outside 0..9 (the first:"
                           " 10); is it the right dataset?\n")  # fmt: skip
    assert not (tmp_path / "save").exists()


@pytest.fixture
def fashion_copy(fashion_root, tmp_path):
    root = tmp_path / "fashion"
    shutil.copytree(fashion_root, root)
    return root


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train-images-idx3-ubyte.gz", b"garbage", "cannot read Fashion-MNIST file"),
        ("train-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x01", mtime=0),
         "header is 00000801"),
        ("train-images-idx3-ubyte.gz", gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x10"
                                                     b"\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 99, mtime=0),
         "holds 99 bytes of data where its header promises 12544"),
        ("train-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 12, mtime=0),
         "is not an IDX file of 1-dimensional bytes"),
    ],
)  # fmt: skip
def test_damaged_fashion_mnist_files_are_named(fashion_copy, name, content, message):
    (fashion_copy / name).write_bytes(content)
    with pytest.raises(datasets.DataError, match=message) as caught:
        datasets.load("fashionmnist", "train", data=str(fashion_copy), gen="unused")
    assert str(fashion_copy / name) in str(caught.value)


def test_fashion_mnist_labels_and_counts_are_checked(fashion_copy):
    write_idx(fashion_copy / "t10k-labels-idx1-ubyte.gz", np.array([0, 3, 10, 2]))
    with pytest.raises(datasets.DataError, match=r"1 labels outside 0..9 \(the first: 10\)"):
        datasets.load("fashionmnist", "val", data=str(fashion_copy), gen="unused")
    write_idx(fashion_copy / "t10k-labels-idx1-ubyte.gz", np.array([0, 3, 2]))
    with pytest.raises(datasets.DataError, match="has 3 labels for 4 images"):
        datasets.load("fashionmnist", "val", data=str(fashion_copy), gen="unused")


def test_a_second_data_folder_is_read_as_itself_not_as_the_first(fashion_copy, tmp_path):
    """MNIST-like files first, then Fashion-MNIST, with the same names and one -gen."""
    other = tmp_path / "mnist"
    other.mkdir()
    for split, n in (("train", 6), ("t10k", 2)):
        write_idx(other / f"{split}-images-idx3-ubyte", np.full((n, 28, 28), 7))  # not gzipped
        write_idx(other / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
        for name in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"):
            (other / name).write_bytes(gzip.decompress((other / name).read_bytes()))
    gen = str(tmp_path / "gen")
    first = datasets.load("fashionmnist", "train", data=str(other), gen=gen)
    second = datasets.load("fashionmnist", "train", data=str(fashion_copy), gen=gen)
    assert len(first) == 6 and first.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert len(second) == 16 and not torch.equal(second.images[0], first.images[0])
    assert not os.path.exists(gen)  # nothing unpacked that could go stale


def test_a_damaged_image_index_is_rebuilt_and_a_folder_in_its_place_is_named(jpeg_root, tmp_path,
                                                                            capsys):  # fmt: skip
    cache = tmp_path / "imagenet.json"
    for content in (
        "[]",
        '{"basedir": 3}',
        "{",
        json.dumps({"classes": ["a"], "train": [["x", 5]]}),
    ):
        cache.write_text(content)
        train = imagenet.load("train", jpeg_root, str(cache))
        assert len(train) == 15 and json.loads(cache.read_text())["basedir"] == jpeg_root
        assert f"=> {cache} is damaged: rebuilding it" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["imagenet.json"]  # no partial file left
    cache.unlink()
    cache.mkdir()
    with pytest.raises(datasets.DataError, match="imagenet.json is a folder, not the image index"):
        imagenet.load("train", jpeg_root, str(cache))


def test_an_unwritable_index_folder_is_one_error_and_leaves_no_partial_file(jpeg_root, tmp_path):
    (tmp_path / "gen").write_text("a file where -gen should be a folder")
    with pytest.raises(datasets.DataError, match="cannot write the image index .* -gen"):
        imagenet.load("train", jpeg_root, str(tmp_path / "gen" / "imagenet.json"))
    assert os.listdir(tmp_path) == ["gen"]


def test_pipes_named_as_images_are_left_out_with_a_warning(jpeg_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(jpeg_root, data)
    os.mkfifo(data / "train" / "apple" / "blocking.jpg")  # opening it would wait forever
    (data / "train" / "apple" / "folder.jpg").mkdir()
    train = imagenet.load("train", str(data), str(tmp_path / "gen.json"))
    assert len(train) == 15
    assert "warning: 2 entries named as images under" in capsys.readouterr().out


def test_file_names_that_are_not_utf8_are_read(jpeg_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(jpeg_root, data)
    apple = os.fsencode(data / "train" / "apple")
    first = sorted(os.listdir(apple))[0]
    os.rename(os.path.join(apple, first), os.path.join(apple, b"caf\xe9.jpg"))  # Latin-1 name
    train = imagenet.load("train", str(data), str(tmp_path / "gen.json"))
    names = [train.samples[i][0] for i in range(len(train))]
    assert "apple/" + os.fsdecode(b"caf\xe9.jpg") in names
    index = [i for i, name in enumerate(names) if name.startswith("apple/caf")][0]
    assert train[index][0].shape[0] == 3  # decoded


def folder_run(data, tmp_path, *flags):
    flags = ("-dataset imagenet -netType resnet -depth 18 -batchSize 4 -cropSize 32 -nEpochs 1"
             " -nThreads 0 -tensorboard false").split() + list(flags)  # fmt: skip
    return run_main(*flags, "-data", str(data), "-save", str(tmp_path / "run"),
                    "-gen", str(tmp_path / "gen"))  # fmt: skip


@pytest.mark.parametrize("fetched", [False, True], ids=["local", "fetched"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_refused_before_anything_is_written(
    split, fetched, shards_root, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(shards_root, data)
    listing = json.loads((data / "shards.json").read_text())
    listing["splits"][split] = {"count": 0, "shards": []}
    (data / "shards.json").write_text(json.dumps(listing))
    source = ["-shardSource", f"pipe:cat {shards_root}/{{shard}}"] if fetched else []
    done = folder_run(data, tmp_path, *source)
    assert done.returncode == 2 and done.stderr == (
        f"error: the {split} split of {data} holds no images: give data with at least one"
        f" {split} image\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_epoch_whose_every_image_is_skipped_stops_and_saves_nothing(split, jpeg_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(jpeg_root, data)
    for path in (data / split).rglob("*.JPEG"):
        path.write_bytes(b"not a jpeg")
    done = folder_run(data, tmp_path, "-skipCorrupt", "true")
    pass_name = "training" if split == "train" else "validation"
    assert done.returncode == 2 and done.stderr == (
        f"error: every image of epoch 1's {pass_name} pass was unreadable and skipped"
        " (-skipCorrupt true): there is no error over 0 images; fix or remove the files (the"
        " checkpoints before are intact)\n"
    )
    assert " * Finished epoch" not in done.stdout and "top1:   0.000" not in done.stdout
    assert " * Best model" not in done.stdout
    saved = os.listdir(tmp_path / "run") if (tmp_path / "run").exists() else []
    assert "model_best.pth" not in saved
    if split == "train":
        assert not [name for name in saved if name.endswith(".pth")], saved
    else:  # the epoch trained is kept, as after any failed test pass: a resumed run tests it
        records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert not [r for r in map(json.loads, records) if r.get("split") == "val"], records


def test_links_that_loop_or_dangle_are_left_out_everywhere(jpeg_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(jpeg_root, data)
    os.symlink("loop.jpg", data / "train" / "apple" / "loop.jpg")
    os.symlink("nowhere.jpg", data / "train" / "apple" / "dangling.jpg")
    done = folder_run(data, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning: 2 entries named as images under" in done.stdout
    assert "broken or looping links" in done.stdout
    make_shards = load_script("make_shards")
    assert make_shards.main([str(data), str(tmp_path / "shards")]) == 0
    assert "warning: 2 entries named as images under" in capsys.readouterr().out


def test_a_failed_download_leaves_no_gen_folder_and_names_the_source(tmp_path):
    """No CIFAR-10 and no way to download it (a proxy that refuses): one line saying where
    the python version is had and where it goes, and no -gen folder made for nothing."""
    gen, save = tmp_path / "gen", tmp_path / "run"
    refusing = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    done = runs.main_run(["-dataset", "cifar10", "-gen", gen, "-save", save], env=refusing)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cifar10 not found and could not be downloaded")
    assert "(https://www.cs.toronto.edu/~kriz/cifar.html, unpacked)" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not gen.exists() and not save.exists()
