"""Images stored in WebDataset tar shards (scripts/make_shards.py writes them): a folder with
shards.json and train-*.tar / val-*.tar, each sample KEY.<image extension> + KEY.cls. Read by
position, as the class folders are: every member's offset is indexed once (and cached in
-gen), and a sample is one read at that offset, so shuffling, sharding between processes
and an exact resume work as for the folders."""

import hashlib
import io
import json
import os
import tarfile

import torch

from datasets.cifar import DataError

INDEX = "shards.json"


def is_sharded(data: str) -> bool:
    """Whether the -data folder holds tar shards (a shards.json) rather than class folders."""
    return os.path.isfile(os.path.join(data, INDEX))


def read_listing(data: str) -> tuple[dict, str]:
    """shards.json: the classes, and per split its count and shards; and a digest of its
    bytes (what the cached index of the shards is keyed by)."""
    path = os.path.join(data, INDEX)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        listing = json.loads(content)
        complete = all(
            isinstance(listing["splits"][split]["count"], int)
            and all("name" in shard for shard in listing["splits"][split]["shards"])
            for split in ("train", "val")
        ) and all(isinstance(name, str) for name in listing["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {path} ({exc}); write it with make_shards.py") from exc
    if not complete:
        raise DataError(f"{path} is not make_shards.py's listing; write the shards again")
    return listing, hashlib.sha256(content).hexdigest()[:16]


class ShardSamples:
    """A split's samples: the shard, offset and size of each image, and its label, packed
    in tensors (cheap for forked loader workers to share)."""

    def __init__(self, shards: list[str], rows: torch.Tensor):
        self.shards, self.rows = shards, rows  # rows: shard number, offset, size, label

    def __len__(self) -> int:
        return len(self.rows)

    def opened(self, index: int, root: str) -> tuple[io.BytesIO, int, str]:
        """(the image's bytes as a file, its label, a name for errors) of the shards in root."""
        shard, offset, size, label = (int(x) for x in self.rows[index])
        path = os.path.join(root, self.shards[shard])
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        return io.BytesIO(data), label, f"{path} at byte {offset}"


def scan_shard(path: str, n_classes: int) -> list[tuple[int, int, int]]:
    """(offset, size, label) of each sample of one tar shard, in order; DataError naming the
    shard and sample for a missing, truncated or malformed one."""
    if not os.path.isfile(path):
        raise DataError(f"shard missing: {path} (listed in {INDEX})")
    images, labels = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, extension = member.name.rpartition("/")[2].partition(".")
                if extension == "cls":
                    labels[key] = tar.extractfile(member).read()
                elif member.isfile():
                    images[key] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    return [(*place, label_of(path, key, labels.get(key), n_classes))
            for key, place in images.items()]  # fmt: skip


def label_of(path: str, key: str, text: bytes | None, n_classes: int) -> int:
    """The class index a sample's .cls holds, checked."""
    if text is None:
        raise DataError(f"shard {path}: sample {key} has no label ({key}.cls)")
    try:
        label = int(text.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"shard {path}: {key}.cls holds {text[:20]!r}, not a class index") from None
    if not 0 <= label < n_classes:
        raise DataError(f"shard {path}: {key}.cls is {label}, beyond the {n_classes} classes")
    return label


def load_samples(data: str, split: str, gen: str) -> tuple[ShardSamples, list[str]]:
    """The split's samples (the index cached in gen, keyed by shards.json's content) and
    the classes."""
    listing, digest = read_listing(data)
    classes, part = listing["classes"], listing["splits"][split]
    names = [shard["name"] for shard in part["shards"]]
    cache = os.path.join(gen, f"shards-{split}-{digest}.pt")
    if os.path.isfile(cache):
        rows = torch.load(cache, weights_only=True)
    else:
        rows = torch.tensor([(number, *sample) for number, name in enumerate(names)
                             for sample in scan_shard(os.path.join(data, name), len(classes))],
                            dtype=torch.int64).reshape(-1, 4)  # fmt: skip
        if len(rows) != part["count"]:
            raise DataError(f"{data}: {len(rows)} {split} samples in the shards, {INDEX} says"
                            f" {part['count']}; write the shards again")  # fmt: skip
        os.makedirs(gen, exist_ok=True)
        torch.save(rows, cache + ".partial")
        os.replace(cache + ".partial", cache)
    return ShardSamples(names, rows), classes
