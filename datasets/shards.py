"""Images stored in WebDataset tar shards (scripts/make_shards.py writes them): a folder with
shards.json and train-*.tar / val-*.tar, each sample KEY.<image extension> + KEY.cls. Read by
position, as the class folders are: every member's offset is indexed once (and cached in
-gen), and a sample is one read at that offset, so shuffling, sharding between processes
and an exact resume work as for the folders.

Shards kept elsewhere (object storage, another machine: -shardSource, a path or a `pipe:`
command per shard) are fetched as the epoch's order reaches them into a spool folder in -gen
that the loader workers of a machine share, checked against shards.json's checksums, indexed
there, and dropped once older than two windows of the order; the order then shuffles the
shards, and the samples within windows of them (sampler.grouped_order), so that only a
few shards are needed at once."""

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tarfile

import torch

from datasets.cifar import DataError

INDEX = "shards.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")


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
        self.blocks = None  # read by position: shuffled whole

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
    try:
        with tarfile.open(path, "r:") as tar:
            images, labels = sample_members(tar)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    return [(member.offset_data, member.size, label_of(path, key, labels.get(key), n_classes))
            for key, member in images.items()]  # fmt: skip


def sample_members(tar: tarfile.TarFile) -> tuple[dict, dict]:
    """The samples of an opened tar (a file or a stream), in order: each key's image member
    (KEY.jpg, .png, ...; other files beside it, such as KEY.json, left alone) and the bytes
    of its KEY.cls."""
    images, labels = {}, {}
    for member in tar:
        key, _, extension = member.name.rpartition("/")[2].partition(".")
        if extension == "cls":
            labels[key] = tar.extractfile(member).read()
        elif member.isfile() and f".{extension.lower()}".endswith(IMAGE_EXTENSIONS):
            images[key] = member
    return images, labels


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


def load_samples(
    data: str, split: str, gen: str, source: str = "", window: int = 1024
) -> tuple["ShardSamples | FetchedSamples", list[str]]:
    """The split's samples (the index cached in gen, keyed by shards.json's content; or,
    with a source, fetched into gen's spool as they are needed) and the classes."""
    listing, digest = read_listing(data)
    if source:
        spool = os.path.join(gen, f"spool-{digest}")
        return FetchedSamples(listing, split, source, spool, window), listing["classes"]
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


class FetchedSamples:
    """A split's samples in shards fetched from `source` as they are needed: rows are (shard
    number, position in the shard); offsets and labels are read once a shard is here."""

    def __init__(self, listing: dict, split: str, source: str, spool: str, window: int):
        shards = listing["splits"][split]["shards"]
        self.names = [shard["name"] for shard in shards]
        self.digests = [shard.get("sha256") for shard in shards]
        counts = torch.tensor([shard["count"] for shard in shards], dtype=torch.int64)
        self.rows = torch.stack(
            [torch.repeat_interleave(torch.arange(len(counts)), counts),
             torch.cat([torch.arange(int(n)) for n in counts])], dim=1)  # fmt: skip
        self.blocks, self.window = counts, window
        self.n_classes = len(listing["classes"])
        per_window = math.ceil(window / max(1, int(counts.min()))) + 1
        self.spool = Spool(source, spool, keep=2 * per_window + 2)
        self.places = {}  # shard number -> its samples' (offset, size, label), in this process

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "places": {}}

    def opened(self, index: int, root: str) -> tuple[io.BytesIO, int, str]:
        """(the image's bytes as a file, its label, a name for errors), its shard fetched."""
        shard, position = (int(x) for x in self.rows[index])
        for _ in range(2):  # a shard dropped from the spool meanwhile is fetched again
            path = self.spool.fetched(self.names[shard], self.digests[shard])
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                if shard not in self.places:
                    self.places[shard] = self.indexed(path, shard)
                offset, size, label = self.places[shard][position]
                handle.seek(offset)
                return io.BytesIO(handle.read(size)), label, f"{self.names[shard]} at byte {offset}"
        raise DataError(f"shard {self.names[shard]} vanished from {self.spool.folder} twice")

    def indexed(self, path: str, shard: int) -> list[tuple[int, int, int]]:
        """The shard's samples, checked against the count shards.json gives."""
        places = scan_shard(path, self.n_classes)
        if len(places) != int(self.blocks[shard]):
            raise DataError(f"shard {self.names[shard]} holds {len(places)} samples,"
                            f" {INDEX} says {int(self.blocks[shard])}")  # fmt: skip
        return places


class Spool:
    """Shards fetched into a local folder, one fetch per shard for all the processes that
    share the folder (a lock per shard), the least recently used beyond `keep` dropped."""

    def __init__(self, source: str, folder: str, keep: int):
        self.source, self.folder, self.keep = source, folder, keep

    def fetched(self, name: str, digest: str | None) -> str:
        """The local path of shard `name`, fetched and checked first if not yet here."""
        path = os.path.join(self.folder, name)
        if not os.path.exists(path):
            os.makedirs(self.folder, exist_ok=True)
            with open(path + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching it
                if not os.path.exists(path):
                    self.fetch(name, digest, path)
            self.drop_old()
        os.utime(path)  # recently used
        return path

    def fetch(self, name: str, digest: str | None, path: str) -> None:
        """Copy or pipe the shard to path (through a partial file), checking its SHA-256."""
        where = self.source.replace("{shard}", name)
        partial = f"{path}.{os.getpid()}.partial"
        try:
            if where.startswith("pipe:"):
                piped(where[5:], partial, name)
            else:
                shutil.copyfile(where, partial)
        except OSError as exc:
            raise DataError(f"cannot fetch shard {name} from {where}: {exc.strerror}") from None
        if digest and sha256_of(partial) != digest:
            os.remove(partial)
            raise DataError(f"shard {name} from {where} is not the one {INDEX} lists (its"
                            " SHA-256 differs): a changed or truncated copy")  # fmt: skip
        os.replace(partial, path)

    def drop_old(self) -> None:
        """Remove the least recently used shards beyond `keep`."""
        shards = [entry for entry in os.scandir(self.folder) if entry.name.endswith(".tar")]
        shards.sort(key=lambda entry: entry.stat().st_mtime_ns)
        for entry in shards[: max(0, len(shards) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)


def piped(command: str, path: str, name: str) -> None:
    """The standard output of a shell command into path; DataError with its last error line
    when it fails."""
    with open(path, "wb") as out:
        done = subprocess.run(command, shell=True, stdout=out, stderr=subprocess.PIPE)
    if done.returncode:
        os.remove(path)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        raise DataError(
            f"cannot fetch shard {name}: `{command}` exited with {done.returncode}{why}"
        )


def sha256_of(path: str) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
