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
import re
import shlex
import shutil
import subprocess
import tarfile
from typing import NamedTuple

import torch

from datasets.cifar import DataError
from datasets.commands import end_group, ended_with_worker, start_session
from datasets.table import MOST_CLASSES
from errors import file_error, first_line, quoted

INDEX = "shards.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
# A shard's name in a listing, which may come from someone else: a plain file name, of the
# characters shard names use, that no shell reads as code or as an option (not a '-' first)
# and that names no path outside the listing's folder or the spool.
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@,-]*\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Bounds on what a listing claims, beyond any real data set (a 1 GB shard of 64-byte samples;
# ImageNet-21k's 21,841 classes): a fetched listing's counts size tensors before any shard is
# here, so a claim of 10**12 samples must not reach an allocation.
MOST_SAMPLES_PER_SHARD = 2**24


def is_sharded(data: str) -> bool:
    """Whether the -data folder holds tar shards (a shards.json) rather than class folders."""
    return os.path.isfile(os.path.join(data, INDEX))


def read_listing(data: str) -> tuple[dict, str]:
    """shards.json, checked (check_listing): the classes, and per split its count and shards;
    and a digest of its bytes (what the cached index of the shards is keyed by)."""
    path = os.path.join(data, INDEX)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        listing = json.loads(content)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {path} ({first_line(exc)}); write it with make_shards.py"
        ) from None
    check_listing(listing, path)
    return listing, hashlib.sha256(content).hexdigest()[:16]


def check_listing(listing, path: str) -> None:
    """A DataError naming the first thing wrong in a listing, which may come from someone
    else: the fields make_shards.py writes, of their types; each shard once, by a plain name."""
    if not (
        isinstance(listing, dict)
        and isinstance(listing.get("classes"), list)
        and isinstance(listing.get("splits"), dict)
        and 0 < len(listing["classes"]) <= MOST_CLASSES
        and all(isinstance(name, str) for name in listing["classes"])
    ):
        raise DataError(
            f"{path} is not make_shards.py's listing (a list of 1 to {MOST_CLASSES:,} class names"
            " and the splits); write it again with make_shards.py or list_shards.py"
        )
    seen = set()
    for split in ("train", "val"):
        part = listing["splits"].get(split)
        if not (isinstance(part, dict) and is_count(part.get("count"))
                and isinstance(part.get("shards"), list)):  # fmt: skip
            raise DataError(f"{path}: the {split} split needs a count and a list of shards")
        for number, shard in enumerate(part["shards"]):
            check_shard(shard, f"{path}: {split} shard {number}", seen)
        total = sum(shard["count"] for shard in part["shards"])
        if total != part["count"]:
            raise DataError(f"{path}: the {split} shards' counts add up to {total}, the {split}"
                            f" count is {part['count']}; write the listing again")  # fmt: skip


def check_shard(shard, where: str, seen: set[str]) -> None:
    """A DataError unless shard has a plain name not in seen (added to it), a sample count
    and, if any, a SHA-256."""
    name = shard.get("name") if isinstance(shard, dict) else None
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise DataError(
            f"{where} is named {quoted(name)}, not a plain file name ending in .tar (letters,"
            " digits, and . _ - + = @ , after the first; no folder): a listing names the"
            " files beside it, and nothing was fetched or run"
        )
    if name in seen:
        raise DataError(f"{where}: {name} is listed twice; list each shard once")
    seen.add(name)
    if not is_count(shard.get("count")) or shard["count"] > MOST_SAMPLES_PER_SHARD:
        raise DataError(f"{where} ({name}) has count {quoted(shard.get('count'))}, not a number"
                        f" of samples a shard holds (0 to {MOST_SAMPLES_PER_SHARD:,})")  # fmt: skip
    digest = shard.get("sha256")
    if digest is not None and not (isinstance(digest, str) and SHA256.fullmatch(digest)):
        raise DataError(f"{where} ({name}) has sha256 {quoted(digest)}, not 64 hex digits")


def is_count(value) -> bool:
    """Whether value is a whole number of samples (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ShardSamples:
    """A split's samples: the shard, offset and size of each image, and its label, packed
    in tensors (cheap for forked loader workers to share)."""

    layout = "tar shards"

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
            images, labels = sample_members(tar, path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    return [(member.offset_data, member.size, label_of(path, key, labels.get(key), n_classes))
            for key, member in images.items()]  # fmt: skip


def sample_members(tar: tarfile.TarFile, shard: str) -> tuple[dict, dict]:
    """The samples of an opened tar (a file or a stream), in order: each key's image member
    (KEY.jpg, .png, ...; other files beside it, such as KEY.json, left alone) and the bytes
    of its KEY.cls. A key keeps its folder, as WebDataset's do: a/0.jpg and b/0.jpg are two."""
    images, labels = {}, {}
    for member in tar:
        folder, _, base = member.name.rpartition("/")
        stem, _, extension = base.partition(".")
        key = f"{folder}/{stem}" if folder else stem
        if extension == "cls":
            if not member.isfile():
                raise DataError(f"shard {shard}: {member.name} is a folder or a link, not a file"
                                " holding a class index")  # fmt: skip
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
    data: str, split: str, gen: str, source: str = "", window: int = 1024, timeout: int = 600
) -> tuple["ShardSamples | FetchedSamples", list[str]]:
    """The split's samples (the index cached in gen, keyed by shards.json's content; or,
    with a source, fetched into gen's spool as they are needed, each fetch within timeout
    seconds) and the classes."""
    listing, digest = read_listing(data)
    if source:
        fetching = Spool(source, os.path.join(gen, f"spool-{digest}"), timeout=timeout)
        return FetchedSamples(listing, split, fetching, window), listing["classes"]
    classes, part = listing["classes"], listing["splits"][split]
    cache = os.path.join(gen, f"shards-{split}-{digest}.pt")
    rows = cached_rows(cache, part, len(classes))
    if rows is None:
        rows = index_shards(data, part["shards"], len(classes))
        partial = f"{cache}.{os.getpid()}.partial"  # processes may index at the same time
        os.makedirs(gen, exist_ok=True)
        torch.save(rows, partial)
        os.replace(partial, cache)
    return ShardSamples([shard["name"] for shard in part["shards"]], rows), classes


def index_shards(data: str, listed: list[dict], n_classes: int) -> torch.Tensor:
    """(shard number, offset, size, label) of every sample of the listed shards in data,
    each shard checked against its count and, where listed, its SHA-256."""
    rows = []
    for number, shard in enumerate(listed):
        path = os.path.join(data, shard["name"])
        samples = scan_shard(path, n_classes)
        if len(samples) != shard["count"]:
            raise DataError(f"shard {path} holds {len(samples)} samples, {INDEX} says"
                            f" {shard['count']}; write the shards again")  # fmt: skip
        if shard.get("sha256") and sha256_of(path) != shard["sha256"]:
            raise DataError(f"shard {path} is not the one {INDEX} lists (its SHA-256 differs):"
                            " a changed or damaged copy; write the shards again")  # fmt: skip
        rows.extend((number, *sample) for sample in samples)
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)


def cached_rows(cache: str, part: dict, n_classes: int) -> torch.Tensor | None:
    """The cached index of a split when it is there and whole (one that cannot be read or
    does not fit the listing is rebuilt, as a damaged folder index is), else None."""
    try:
        rows = torch.load(cache, weights_only=True)
    except Exception:  # noqa: BLE001 - missing, or damaged in any way: index again
        return None
    fits = (
        isinstance(rows, torch.Tensor)
        and rows.dtype == torch.int64
        and rows.shape == (part["count"], 4)
        and bool((rows >= 0).all())
        and bool((rows[:, 0] < len(part["shards"])).all())
        and bool((rows[:, 3] < n_classes).all())
    )
    return rows if fits else None


class FetchedSamples:
    """A split's samples in shards fetched from `source` as they are needed: rows are (shard
    number, position in the shard); offsets and labels are read once a shard is here."""

    layout = "fetched tar shards"

    def __init__(self, listing: dict, split: str, fetching: "Spool", window: int):
        shards = listing["splits"][split]["shards"]
        self.names = [shard["name"] for shard in shards]
        self.digests = [shard.get("sha256") for shard in shards]
        counts = torch.tensor([shard["count"] for shard in shards], dtype=torch.int64)
        positions = [torch.arange(int(n)) for n in counts] or [torch.zeros(0, dtype=torch.int64)]
        self.rows = torch.stack(
            [torch.repeat_interleave(torch.arange(len(counts)), counts), torch.cat(positions)], 1
        )
        self.blocks, self.window = counts, window
        self.n_classes = len(listing["classes"])
        smallest = int(counts.min()) if len(counts) else 1  # no shard: refused by datasets.load
        per_window = math.ceil(window / max(1, smallest)) + 1
        self.spool = fetching._replace(keep=2 * per_window + 2)
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


class Spool(NamedTuple):
    """Shards fetched from `source` into a local folder, one fetch per shard for all the
    processes that share the folder (a lock per shard), each within `timeout` seconds; the
    least recently used beyond `keep` dropped."""

    source: str
    folder: str
    keep: int = 2
    timeout: int = 600

    def fetched(self, name: str, digest: str | None) -> str:
        """The local path of shard `name`, fetched and checked first if not yet here."""
        path = inside(self.folder, name)
        try:
            if not os.path.exists(path):
                os.makedirs(self.folder, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW  # a link there is not ours
                with open(os.open(path + ".lock", flags, 0o644), "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching it
                    if not os.path.exists(path):
                        self.fetch(name, digest, path)
                self.drop_old()
            with contextlib.suppress(FileNotFoundError):  # dropped by another process: refetched
                os.utime(path)  # recently used
        except OSError as exc:  # the spool itself, not the shard: say so
            raise DataError(
                f"the shard spool {self.folder} cannot be used ({file_error(exc)}): remove what"
                " is in the way there, or give another -gen"
            ) from None
        return path

    def fetch(self, name: str, digest: str | None, path: str) -> None:
        """Copy or pipe the shard to path (through a partial file), checking its SHA-256."""
        where = source_for(self.source, name)
        partial = f"{path}.{os.getpid()}.partial"
        try:
            if where.startswith("pipe:"):
                piped(where[5:], partial, name, self.timeout)
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


def source_for(source: str, name: str) -> str:
    """-shardSource with {shard} replaced by the shard's name, quoted for the shell in a
    pipe: command, so that a name is never read as code."""
    return source.replace("{shard}", shlex.quote(name) if source.startswith("pipe:") else name)


def inside(folder: str, name: str) -> str:
    """folder/name, which must resolve inside folder (check_listing's names always do: this
    guards the spool against a name that reached it some other way)."""
    path = os.path.join(folder, name)
    base = os.path.realpath(folder)
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        raise DataError(f"shard {quoted(name)} would be written outside {folder}: refused")
    return path


def piped(command: str, path: str, name: str, timeout: float) -> None:
    """The standard output of a shell command into path within timeout seconds; DataError
    with its last error line when it fails. The command runs in a session of its own, ended
    whole (its process group) when it times out or the wait is interrupted: a stop request,
    or the loader worker waiting on it being ended."""
    with open(path, "wb") as out:
        process = None
        try:
            process = start_session(command, stdout=out, stderr=subprocess.PIPE)
            with ended_with_worker(process):
                _, said = process.communicate(timeout=timeout)
        except BaseException as exc:
            if process is not None:
                end_group(process)
            os.remove(path)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            raise DataError(
                f"cannot fetch shard {name}: `{command}` took over -fetchTimeout {timeout} s"
                " (ended); check the command, or give a longer -fetchTimeout"
            ) from None
    if process.returncode:
        os.remove(path)
        lines = said.decode(errors="replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        raise DataError(
            f"cannot fetch shard {name}: `{command}` exited with {process.returncode}{why}"
        )


def sha256_of(path: str) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
