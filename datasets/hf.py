"""Images in Hugging Face datasets' own files, read with pyarrow alone (the `datasets` package
is not needed): a folder of parquet files as the Hub serves them (imagenet-1k's
data/train-00000-of-00257.parquet ..., data/validation-...), or a folder written by
datasets' save_to_disk (dataset_dict.json, <split>/data-*.arrow).

A sample is addressed by (file, row group, row), so the shuffling, the split between
processes and an exact resume are the class folders' own. Parquet is read a whole row group
at a time, so its samples are shuffled within windows of row groups that each loader worker
keeps in memory (see sampler.grouped_order); Arrow files are memory-mapped and read by row.
"""

import glob
import io
import json
import os
import re
from collections import OrderedDict
from typing import NamedTuple

import torch

from datasets.cifar import DamagedStorage, DataError
from errors import first_line, quoted

DATASET_DICT = "dataset_dict.json"  # what save_to_disk writes at the top of a DatasetDict
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid")}
INSTALL = "pip install pyarrow"


def is_hf(data: str) -> bool:
    """Whether -data holds a save_to_disk folder or parquet files (looked for only where a
    class-folder tree would not make it slow: at most three levels, no train/ of folders)."""
    if os.path.isfile(os.path.join(data, DATASET_DICT)):
        return True
    train = os.path.join(data, "train")
    if os.path.isdir(os.path.join(data, "val")) and os.path.isdir(train):
        return bool(glob.glob("*.parquet", root_dir=train))
    return bool(parquet_files(data))


def parquet_files(data: str) -> list[str]:
    """The *.parquet files at most three levels below data, relative, sorted."""
    found = (glob.glob(f"{'*/' * depth}*.parquet", root_dir=data) for depth in range(3))
    return sorted(path for paths in found for path in paths)


def split_of(relative: str) -> str | None:
    """'train' or 'val' for a parquet file by the first split name in its path
    (data/train-00000-of-00257.parquet, default/validation/0000.parquet), else None."""
    words = relative.replace("-", "/").replace("_", "/").replace(".", "/").split("/")
    for word in words:
        for split, names in SPLIT_NAMES.items():
            if word.lower() in names:
                return split
    return None


# A save_to_disk split's data file: a plain name in its folder (datasets writes
# data-00000-of-00001.arrow), so that a listing never names a file elsewhere.
ARROW_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@,-]*\.arrow")


def pyarrow_modules():
    """(pyarrow, pyarrow.parquet), or a DataError saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DataError(
            f"reading Hugging Face parquet / Arrow files needs pyarrow: {INSTALL}"
        ) from None
    return pyarrow, pyarrow.parquet


def split_files(data: str, split: str) -> list[str]:
    """The files (relative to data) of split: a save_to_disk split folder's Arrow files, or
    the parquet files named by the split."""
    if os.path.isfile(os.path.join(data, DATASET_DICT)):
        return saved_split_files(data, split)
    files = [path for path in parquet_files(data) if split_of(path) == split]
    if not files:
        raise DataError(
            f"no parquet files of the {split} split in {data}: expected names holding"
            f" {' or '.join(SPLIT_NAMES[split])} (as the Hub's"
            f" data/{SPLIT_NAMES[split][0]}-*.parquet); download them with huggingface-cli"
            " download <dataset> --repo-type dataset --local-dir DIR"
        )
    return files


def saved_split_files(data: str, split: str) -> list[str]:
    """The Arrow files save_to_disk listed for split in its state.json."""
    try:
        with open(os.path.join(data, DATASET_DICT)) as handle:
            splits = json.load(handle)["splits"]
        name = next((s for s in splits if s.lower() in SPLIT_NAMES[split]), None)
        if name is None:
            raise DataError(
                f"{data} has no {split} split (its splits: {', '.join(splits)}); expected"
                f" {' or '.join(SPLIT_NAMES[split])}"
            )
        with open(os.path.join(data, name, "state.json")) as handle:
            files = [entry["filename"] for entry in json.load(handle)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the save_to_disk folder {data} ({exc})") from None
    for file in files:  # a listing that may come from someone else names files beside it
        if not (isinstance(file, str) and ARROW_FILE.fullmatch(file)):
            raise DataError(
                f"{os.path.join(data, name, 'state.json')} lists a data file {quoted(file)}:"
                " not a plain .arrow file name beside it (no folder); refused"
            )
    return [os.path.join(name, file) for file in files]


class Columns(NamedTuple):
    """The image and label columns' names (-imageColumn, -labelColumn)."""

    image: str = "image"
    label: str = "label"

    def check(self, schema, path: str) -> None:
        """DataError naming the file, its columns and the flag when a column is missing."""
        for name, flag in ((self.image, "-imageColumn"), (self.label, "-labelColumn")):
            if name not in schema.names:
                raise DataError(
                    f"{path} has no column '{name}' (its columns: {', '.join(schema.names)});"
                    f" name the column with {flag}"
                )
        kind = schema.field(self.image).type
        if not (is_binary(kind) or (kind.num_fields and is_binary(field_type(kind, "bytes")))):
            raise DataError(
                f"{path}: column '{self.image}' holds {kind}, not image bytes (binary, or"
                " datasets' Image struct {bytes, path}); name the column with -imageColumn"
            )


def field_type(struct, name: str):
    """The type of a struct's field, or None."""
    index = struct.get_field_index(name)
    return struct.field(index).type if index >= 0 else None


def is_binary(kind) -> bool:
    """Whether an Arrow type holds bytes."""
    return kind is not None and str(kind) in ("binary", "large_binary", "binary_view")


def open_table(path: str):
    """A parquet file (pyarrow.parquet.ParquetFile) or a memory-mapped Arrow file's table."""
    pyarrow, parquet = pyarrow_modules()
    try:
        if path.endswith(".parquet"):
            return parquet.ParquetFile(path)
        return pyarrow.ipc.open_stream(pyarrow.memory_map(path)).read_all()
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"cannot read {path}: {one_reason(exc)}") from None


def one_reason(exc: BaseException) -> str:
    """An Arrow error's reason on one line, cut (thrift's can run over lines)."""
    return " ".join(first_line(exc).split())[:300]


def schema_of(table):
    """The Arrow schema of an opened parquet file or Arrow table."""
    return getattr(table, "schema_arrow", table.schema)


def class_names(table, label: str) -> list[str] | None:
    """The label column's class names that datasets records (a ClassLabel), or None."""
    metadata = schema_of(table).metadata or {}
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        names = features[label]["names"]
    except (KeyError, ValueError, TypeError):
        return None
    return names if isinstance(names, list) and names else None


def labels_of(table, column: str, path: str) -> list:
    """The label column of an opened file, as Python values (None for a missing one)."""
    pyarrow, _ = pyarrow_modules()
    try:
        if hasattr(table, "read"):  # parquet: this column only
            return table.read(columns=[column]).column(column).to_pylist()
        return table.column(column).to_pylist()
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"cannot read the {column} column of {path}: {one_reason(exc)}; the file"
                        " is damaged: fetch it again") from None  # fmt: skip


def groups_of(table) -> list[int]:
    """The rows of each part read at once: a parquet file's row groups, an Arrow file whole."""
    metadata = getattr(table, "metadata", None)
    if metadata is None or not hasattr(table, "read_row_group"):
        return [table.num_rows]
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def checked_label(value, path: str, row: int, n_classes: int) -> int:
    """A row's label, or a DataError naming the file and row."""
    if value is None:
        raise DataError(f"{path}: row {row} has no label")
    if not isinstance(value, int) or not 0 <= value < n_classes:
        raise DataError(
            f"{path}: row {row} has label {quoted(value)}, not a class index below {n_classes}"
            " (an unlabelled split, such as imagenet-1k's test, cannot train or test)"
        )
    return value


def read_classes(data: str, columns: Columns) -> list[str]:
    """The class names recorded in the train files, else '0' ... up to their highest label."""
    files = split_files(data, "train")
    table = open_table(os.path.join(data, files[0]))
    columns.check(schema_of(table), os.path.join(data, files[0]))
    names = class_names(table, columns.label)
    if names is not None:
        return [str(name) for name in names]
    highest = -1
    for file in files:
        path = os.path.join(data, file)
        labels = labels_of(open_table(path), columns.label, path)
        highest = max([highest, *(v for v in labels if isinstance(v, int))])
    return [str(i) for i in range(highest + 1)]


def load_samples(data: str, split: str, columns: Columns, window: int):
    """The split's samples and the classes (checked: columns, labels, class names alike)."""
    classes = read_classes(data, columns)
    files, rows = split_files(data, split), []
    for number, file in enumerate(files):
        path = os.path.join(data, file)
        table = open_table(path)
        columns.check(schema_of(table), path)
        names = class_names(table, columns.label)
        if names is not None and [str(n) for n in names] != classes:
            raise DataError(f"{path} names other classes than the train split's files")
        labels = labels_of(table, columns.label, path)
        start = 0
        for group, size in enumerate(groups_of(table)):
            rows += [(number, group, r, checked_label(labels[start + r], path, start + r,
                                                     len(classes)))
                     for r in range(size)]  # fmt: skip
            start += size
    packed = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)
    if not len(packed):
        raise DataError(f"the {split} files of {data} hold no rows")
    return TableSamples(files, packed, columns.image, window), classes


class TableSamples:
    """A split's rows: file, row group and row in the group of each image, and its label,
    packed in tensors; each process opens the files and caches row groups itself."""

    def __init__(self, files: list[str], rows: torch.Tensor, image_column: str, window: int):
        self.files, self.rows, self.image_column = files, rows, image_column
        self.window = window  # samples shuffled together (parquet): the cache holds 2 windows
        self.blocks = block_lengths(rows) if any(f.endswith(".parquet") for f in files) else None
        self.layout = "parquet files" if self.blocks is not None else "Arrow files"
        self.cache = ProcessCache()

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cache": ProcessCache()}  # open files stay in their process

    def opened(self, index: int, root: str) -> tuple[io.BytesIO, int, str]:
        """(the image's bytes as a file, its label, a name for errors) of the files in root."""
        file, group, row, label = (int(x) for x in self.rows[index])
        path = os.path.join(root, self.files[file])
        where = f"row {row}" if self.blocks is None else f"row group {group}, row {row}"
        try:
            images = self.cache.group(path, group, self.image_column, 2 * self.window)
        except (OSError, pyarrow_modules()[0].ArrowException) as exc:
            raise DamagedStorage(f"cannot read {path} ({where.split(', row ')[0]}):"
                                 f" {one_reason(exc)}; the file is damaged: fetch it"
                                 " again") from None  # fmt: skip
        return io.BytesIO(images[row] or b""), label, f"{path} ({where})"


def block_lengths(rows: torch.Tensor) -> torch.Tensor:
    """The lengths of the runs of rows of one (file, row group), in index order."""
    _, counts = torch.unique_consecutive(rows[:, 0] * 2**32 + rows[:, 1], return_counts=True)
    return counts


class ProcessCache:
    """The files a process opened and the row groups it read (least recently used first)."""

    def __init__(self):
        self.tables, self.groups, self.pid = {}, OrderedDict(), os.getpid()

    def group(self, path: str, group: int, column: str, keep_rows: int):
        """The image bytes of one row group (a parquet file) or of an Arrow file whole, as
        a sequence of bytes or None per row."""
        if self.pid != os.getpid():  # forked: a worker opens its own
            self.__init__()
        key = (path, group)
        if key not in self.groups:
            if path not in self.tables:
                self.tables[path] = open_table(path)
            self.groups[key] = image_bytes(self.tables[path], group, column)
            while len(self.groups) > 1 and sum(map(len, self.groups.values())) > keep_rows:
                self.groups.popitem(last=False)
        self.groups.move_to_end(key)
        return self.groups[key]


def image_bytes(table, group: int, column: str) -> "ArrowBytes":
    """The image column of a parquet row group (or of an Arrow table, memory-mapped, not
    copied): a struct's 'bytes' field ({bytes, path}: datasets' Image) or a binary column."""
    if hasattr(table, "read_row_group"):
        table = table.read_row_group(group, columns=[column], use_threads=False)
    values = table.column(column)
    return ArrowBytes(values, has_field=values.type.num_fields > 0)


class ArrowBytes:
    """Indexable bytes of an Arrow column of images (None for a null)."""

    def __init__(self, values, has_field: bool):
        self.values, self.has_field = values, has_field

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, row: int) -> bytes | None:
        value = self.values[row]
        value = (value["bytes"] if self.has_field and value.is_valid else value).as_py()
        return value if isinstance(value, bytes) else None
