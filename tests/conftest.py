"""Real test images (PyPI's foolbox==3.3.4 wheel) written in the datasets' real formats."""

import glob
import gzip
import importlib.util
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")
WHEEL = "foolbox==3.3.4"
TIMEOUT = 600  # seconds for one main.py run: a hung run fails its test, not the suite

# The SLURM tests need a cluster (make test-slurm sets one up and SLURM_TESTS=1).
collect_ignore = [] if os.environ.get("SLURM_TESTS") else ["slurm"]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are run, not imported, by users)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_flags(base: list[str], extra: list[str]) -> list[str]:
    """base's -flag value pairs, less those that extra gives again, then extra (main.py
    refuses a flag given twice)."""
    given = {token for token in extra if token.startswith("-") and not token[1:2].isdigit()}
    kept, skip = [], False
    for token in base:
        if skip:
            skip = False
        elif token in given:
            skip = True  # its value goes too
        else:
            kept.append(token)
    return [*kept, *extra]


def foolbox_wheel() -> str:
    """Path of the foolbox wheel, downloaded from PyPI into .cache/ the first time."""
    found = glob.glob(os.path.join(CACHE, "foolbox-3.3.4-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", CACHE],
            check=True,
        )
        found = glob.glob(os.path.join(CACHE, "foolbox-3.3.4-*.whl"))
    return found[0]


@pytest.fixture(scope="session")
def foolbox_data(tmp_path_factory) -> str:
    """Folder with foolbox/data/*: 20 CIFAR-10, 20 CIFAR-100, 20 Fashion-MNIST, 20 ImageNet files."""
    target = tmp_path_factory.mktemp("foolbox")
    with zipfile.ZipFile(foolbox_wheel()) as wheel:
        members = [n for n in wheel.namelist() if n.startswith("foolbox/data/")]
        wheel.extractall(target, members)
    return str(target / "foolbox" / "data")


def labelled_images(folder: str, prefix: str) -> list[tuple[str, int]]:
    """(path, label) of foolbox's <prefix>_<index>_<label>.<ext> files, by index."""
    pattern = re.compile(rf"{prefix}_(\d+)_(\d+)\.\w+$")
    found = []
    for name in os.listdir(folder):
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name), int(match.group(2))))
    return [(path, label) for _, path, label in sorted(found)]


def planar_rows(paths: list[str]) -> np.ndarray:
    """N x 3072 uint8 rows (R plane, G plane, B plane), the CIFAR python layout."""
    images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths]
    return np.stack([image.transpose(2, 0, 1).reshape(-1) for image in images])


def write_pickle(path: str, content: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


@pytest.fixture(scope="session")
def cifar10_root(foolbox_data, tmp_path_factory) -> str:
    """cifar-10-batches-py/ with 5 train batches of 4 real images and a 20-image test batch."""
    samples = labelled_images(foolbox_data, "cifar10")
    folder = tmp_path_factory.mktemp("c10") / "cifar-10-batches-py"
    folder.mkdir()
    rows = planar_rows([p for p, _ in samples])
    labels = [label for _, label in samples]
    for i in range(5):
        part = slice(4 * i, 4 * i + 4)
        write_pickle(folder / f"data_batch_{i + 1}", {b"data": rows[part], b"labels": labels[part]})
    write_pickle(folder / "test_batch", {b"data": rows, b"labels": labels})
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(folder / "batches.meta", {b"label_names": names})
    return str(folder.parent)


@pytest.fixture(scope="session")
def cifar100_root(foolbox_data, tmp_path_factory) -> str:
    """cifar-100-python/ with train (first 12 real images) and test (all 20), fine labels."""
    samples = labelled_images(foolbox_data, "cifar100")
    folder = tmp_path_factory.mktemp("c100") / "cifar-100-python"
    folder.mkdir()
    rows = planar_rows([p for p, _ in samples])
    fine = [label for _, label in samples]
    coarse = [label // 5 for label in fine]  # not the real coarse map; the loader must ignore it
    write_pickle(
        folder / "train",
        {b"data": rows[:12], b"fine_labels": fine[:12], b"coarse_labels": coarse[:12]},
    )
    write_pickle(folder / "test", {b"data": rows, b"fine_labels": fine, b"coarse_labels": coarse})
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]})
    return str(folder.parent)


def write_idx(path: str, array: np.ndarray) -> None:
    """A gzipped IDX file (the MNIST format) of uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fashion_root(foolbox_data, tmp_path_factory) -> str:
    """The four gzipped IDX files of Fashion-MNIST holding foolbox's 20 real images."""
    samples = labelled_images(foolbox_data, "fashionMNIST")
    images = np.stack([np.asarray(Image.open(p).convert("L")) for p, _ in samples])
    labels = np.array([label for _, label in samples], dtype=np.uint8)
    folder = tmp_path_factory.mktemp("fashion")
    for split, part in (("train", slice(0, 16)), ("t10k", slice(16, 20))):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images[part])
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels[part])
    return str(folder)


@pytest.fixture(scope="session")
def jpeg_root(foolbox_data, tmp_path_factory) -> str:
    """train/<class>/*.jpg and val/<class>/*.jpg from foolbox's 20 real ImageNet JPEGs.

    Three classes named by the ImageNet label of their images; byte order puts 'Zebra' first.
    """
    samples = labelled_images(foolbox_data, "imagenet")
    root = tmp_path_factory.mktemp("jpegs")
    names = ["Zebra", "apple", "banana"]
    for i, (path, label) in enumerate(samples):
        split = "val" if i % 4 == 3 else "train"
        folder = root / split / names[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / f"n{label:04d}_{i}.JPEG")
    return str(root)


@pytest.fixture(scope="session")
def shards_root(jpeg_root, tmp_path_factory) -> str:
    """The real JPEG tree as shards of 4 samples."""
    dst = tmp_path_factory.mktemp("shards") / "shards"
    assert load_script("make_shards").main([jpeg_root, str(dst), "--shard-size", "4"]) == 0
    return str(dst)


@pytest.fixture(scope="session")
def hub_files(jpeg_root, tmp_path_factory) -> str:
    """The real JPEG tree written by Hugging Face's datasets: parquet/ (two files a split,
    row groups of 4) and saved/ (save_to_disk)."""
    out = tmp_path_factory.mktemp("hub")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    writer = os.path.join(ROOT, "tests", "hub_writer.py")
    subprocess.run([sys.executable, writer, jpeg_root, str(out), "4", "2"], check=True, env=env)
    return str(out)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs mounted at tmp_path/fs (the tests run as root, as CI does)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(folder) -> None:
    """Write into folder/filler until its device is full."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
