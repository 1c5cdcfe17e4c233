"""The image index of class folders (<data>/train/<class>/*, <data>/val/<class>/*) and its
JSON cache: classes are the byte-sorted folder names of train/ (class index = position); the
index is cached in <gen>/<dataset>.json and rebuilt when -data changes, as the Lua's
imagenet-gen.lua cache was."""

import json
import os

from datasets.cifar import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


def list_classes(train_dir: str) -> list[str]:
    """Byte-sorted class folder names (hidden entries and stray files skipped)."""
    names = [
        entry.name
        for entry in os.scandir(train_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    ]
    if not names:
        loose = sum(map(is_image, os.listdir(train_dir)))
        if loose:
            raise flat_folder_error(train_dir, loose)
        raise DataError(f"no class folders in {train_dir}: expected train/<class>/<image>")
    return sorted(names, key=os.fsencode)


def flat_folder_error(split_dir: str, count: int) -> DataError:
    """The error for images lying directly in split_dir, as ImageNet's val/ comes."""
    return DataError(
        f"{split_dir} holds {count} images directly, not in class folders: move each into"
        f" {split_dir}/<class>/ (ImageNet's val/: run valprep.sh of"
        " soumith/imagenetloader.torch there, as the Lua's INSTALL.md does)"
    )


def is_image(name: str) -> bool:
    """Whether a file name has one of the readable image extensions (any case)."""
    return name.lower().endswith(EXTENSIONS)


def list_images(split_dir: str, classes: list[str]) -> list[tuple[str, int]]:
    """(class/file, class index) of every image one level below split_dir, sorted."""
    index = {name: i for i, name in enumerate(classes)}
    samples, loose = [], 0
    irregular = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: os.fsencode(e.name)):
        if not entry.is_dir() or entry.name.startswith("."):
            loose += entry.is_file() and is_image(entry.name)
            continue
        if entry.name not in index:
            raise DataError(f"class not found in train/: {entry.name} (in {split_dir})")
        names, others = image_files_in(entry.path)
        irregular += others
        if not names:
            print(f"warning: no images in {entry.path}")
        for name in sorted(names, key=os.fsencode):
            samples.append((f"{entry.name}/{name}", index[entry.name]))
    if irregular:
        print(
            f"warning: {len(irregular)} entries named as images under {split_dir} are not"
            f" regular files (pipes, devices, folders, broken or looping links; e.g."
            f" {irregular[0]}): left out"
        )
    if loose and not samples:
        raise flat_folder_error(split_dir, loose)
    if not samples:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {split_dir}")
    if loose:
        print(f"warning: {loose} images directly in {split_dir} are in no class folder: left out")
    return samples


def image_files_in(folder: str) -> tuple[list[str], list[str]]:
    """(image file names, paths of other entries with image names) in folder: a pipe or a
    device named *.jpg would block or fail the loader, a folder would fail it."""
    images, others = [], []
    for entry in os.scandir(folder):
        if is_image(entry.name):
            (images if is_regular_file(entry) else others).append(entry.name)
    return images, [os.path.join(folder, name) for name in others]


def is_regular_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a file, or a link to one (a link loop or an entry that
    cannot be looked at is not: left out with the others, not a stop)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def build_index(data: str) -> dict:
    """Classes and image lists of both splits (the Lua's imagenet-gen.lua)."""
    print("=> Generating list of images")
    stamp = folder_stamp(data)  # before listing: a change made meanwhile is seen next time
    classes = list_classes(os.path.join(data, "train"))
    print(" | finding all validation images")
    val = list_images(os.path.join(data, "val"), classes)
    print(" | finding all training images")
    train = list_images(os.path.join(data, "train"), classes)
    return {"basedir": data, "stamp": stamp, "classes": classes, "train": train, "val": val}


def folder_stamp(data: str) -> dict[str, int]:
    """Modification times of train/, val/ and their class folders: a folder's changes when
    an entry is added, removed or renamed in it, so an equal stamp means the same lists."""
    stamp = {}
    for split in ("train", "val"):
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            continue  # the listing says what is missing
        stamp[split] = os.stat(folder).st_mtime_ns
        for entry in os.scandir(folder):
            if entry.is_dir():
                stamp[f"{split}/{entry.name}"] = entry.stat().st_mtime_ns
    return stamp


def read_index(data: str, cache_path: str) -> dict | None:
    """The cached index if it lists data's folders as they are now; else None, and why."""
    if os.path.isdir(cache_path):
        raise DataError(
            f"{cache_path} is a folder, not the image index file; move it away or choose"
            " another -gen"
        )
    try:
        with open(cache_path) as handle:
            index = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        index = None
    if not is_index(index):
        print(f"=> {cache_path} is damaged: rebuilding it")
        return None
    if index["basedir"] != data:
        return None
    if index["stamp"] != folder_stamp(data):
        print(f"=> image folders changed since {cache_path} was built: rebuilding it")
        return None
    return index


def is_index(index) -> bool:
    """Whether index has the form build_index gives (labels in range included)."""
    if not isinstance(index, dict) or not isinstance(index.get("basedir"), str):
        return False
    classes = index.get("classes")
    if not isinstance(index.get("stamp"), dict) or not isinstance(classes, list) or not classes:
        return False
    return all(is_sample_list(index.get(split), len(classes)) for split in ("train", "val"))


def is_sample_list(samples, n_classes: int) -> bool:
    """Whether samples is a list of [relative path, label in 0..n_classes-1]."""
    return isinstance(samples, list) and all(
        isinstance(s, list)
        and len(s) == 2
        and isinstance(s[0], str)
        and type(s[1]) is int
        and 0 <= s[1] < n_classes
        for s in samples
    )


def cached_index(data: str, cache_path: str) -> dict:
    """The index from cache_path, rebuilt (and saved) when missing, damaged, made for
    another -data, or older than a change to the folders (the Lua rebuilt only for another
    -data)."""
    index = read_index(data, cache_path)
    if index is not None:
        return index
    index = build_index(data)
    print(f" | saving list of images to {cache_path}")
    partial = f"{cache_path}.{os.getpid()}.partial"  # ranks may build it at the same time
    try:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        with open(partial, "w") as handle:
            json.dump(index, handle)
        os.replace(partial, cache_path)
    except OSError as exc:
        if os.path.exists(partial):
            os.remove(partial)
        raise DataError(
            f"cannot write the image index {cache_path} ({exc.strerror}); choose a writable"
            " -gen folder"
        ) from None
    return index


def check_split_folders(data: str) -> None:
    """A DataError naming train/ or val/ when -data lacks it."""
    for split in ("train", "val"):
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            raise DataError(
                f"ImageNet missing `{split}` directory: {folder} (class folders, tar shards"
                " or Hugging Face parquet files: see docs/data.md)"
            )
