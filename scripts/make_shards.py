"""Write an ImageNet-style folder (train/<class>/<image>, val/<class>/<image>) as WebDataset tar
shards, for reading from shared or object storage.

  python scripts/make_shards.py SRC DST [--shard-size 1GB | --shard-size 5000] [--seed 0]

DST/train-000000.tar, ..., DST/val-000000.tar: each sample is KEY.<ext> (the image's own bytes,
never re-encoded) and KEY.cls (its class index, in the sorted order of train/'s folders, as
-dataset imagenet numbers them). Training samples are shuffled once (--seed) so that each shard
mixes the classes; validation samples keep their order. DST/shards.json lists the classes and,
per split, each shard's name, sample count and SHA-256. A run that was interrupted is resumed
by running the same command again: the shards it finished are checked against their checksums
and kept; any other content of DST makes it refuse.
"""

import argparse
import errno
import hashlib
import io
import json
import os
import random
import re
import sys
import tarfile

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints import atomic_write  # noqa: E402 - after the repository root is on the path
from datasets import folder_index  # noqa: E402
from datasets.shards import sha256_of  # noqa: E402
from errors import Stopped, UsageError, file_error, stopped_status, stops_raise  # noqa: E402

PROGRESS = ".make_shards.json"  # the plan and the finished shards, while a run is unfinished
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def shard_limit(text: str) -> tuple[str, int]:
    """--shard-size: ('bytes', n) for 1GB / 500MB / 64MiB, ('samples', n) for a whole number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text, re.IGNORECASE)
    if match and match.group(2) is None and match.group(1).isdigit() and int(match.group(1)):
        return "samples", int(match.group(1))
    if match and match.group(2) and float(match.group(1)) * UNITS[match.group(2).upper()] >= 1:
        return "bytes", int(float(match.group(1)) * UNITS[match.group(2).upper()])
    raise argparse.ArgumentTypeError(
        f"{text!r}: give a whole number of samples (5000) or a size in bytes (1GB, 500MB)"
    )


def plan_shards(samples: list[tuple[str, int]], sizes: list[int], limit: tuple[str, int]):
    """The samples cut into shards: lists of positions, each shard within the limit (a
    sample bigger than a byte limit gets a shard of its own)."""
    kind, most = limit
    shards, current, used = [], [], 0
    for position, size in enumerate(sizes):
        cost = 1 if kind == "samples" else size
        if current and used + cost > most:
            shards.append(current)
            current, used = [], 0
        current.append(position)
        used += cost
    return shards + ([current] if current else [])


def member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A tar member with fixed metadata, so the same input gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    return info, io.BytesIO(data)


def write_shard(path: str, folder: str, samples: list[tuple[str, int]], keys: list[str]) -> str:
    """Write the samples to path (atomic_write: a temporary name, removed if the write fails,
    and an error naming the file); its SHA-256."""

    def write(stream) -> None:
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for (relative, label), key in zip(samples, keys, strict=True):
                extension = os.path.splitext(relative)[1].lower().lstrip(".") or "jpg"
                with open(os.path.join(folder, relative), "rb") as handle:
                    tar.addfile(*member(f"{key}.{extension}", handle.read()))
                tar.addfile(*member(f"{key}.cls", str(label).encode()))

    atomic_write(path, write)
    return sha256_of(path)


def split_plan(src: str, split: str, classes: list[str], limit, seed: int) -> dict:
    """The shards of one split: names, and the (file, label) of each."""
    folder = os.path.join(src, split)
    samples = folder_index.list_images(folder, classes)
    if split == "train":
        random.Random(seed).shuffle(samples)
    sizes = [os.path.getsize(os.path.join(folder, relative)) for relative, _ in samples]
    shards = plan_shards(samples, sizes, limit)
    return {
        "count": len(samples),
        "shards": [
            {"name": f"{split}-{n:06d}.tar", "samples": [samples[p] for p in positions],
             "first": positions[0]}
            for n, positions in enumerate(shards)
        ],
    }  # fmt: skip


def make_plan(src: str, limit, seed: int) -> dict:
    """What the run writes: the classes and each split's shards."""
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(src, split)):
            raise UsageError(f"{src} has no {split}/ folder: expected {split}/<class>/<image>")
    classes = folder_index.list_classes(os.path.join(src, "train"))
    splits = {split: split_plan(src, split, classes, limit, seed) for split in ("train", "val")}
    return {"source": os.path.abspath(src), "limit": list(limit), "seed": seed,
            "classes": classes, "splits": splits}  # fmt: skip


def start_or_resume(dst: str, plan: dict) -> dict:
    """The finished shards (name -> SHA-256) of an interrupted run of this plan in dst, or
    {} for an empty dst; a UsageError for anything else."""
    progress_path = os.path.join(dst, PROGRESS)
    if not os.path.exists(dst) or not os.listdir(dst):
        os.makedirs(dst, exist_ok=True)
        save_progress(dst, plan, {})
        return {}
    if not os.path.exists(progress_path):
        raise UsageError(f"{dst} is not empty; give an empty or new folder for the shards")
    with open(progress_path) as handle:
        saved = json.load(handle)
    if saved["plan"] != fingerprint(plan):
        raise UsageError(
            f"{dst} holds an unfinished run of other images or settings; give another folder"
        )
    finished = {}
    for name, digest in saved["finished"].items():
        path = os.path.join(dst, name)
        if os.path.exists(path) and sha256_of(path) == digest:
            finished[name] = digest  # a damaged or missing shard is written again
    return finished


def fingerprint(plan: dict) -> str:
    """A digest of the plan (every file, label and shard): a resumed run must have the same."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def save_progress(dst: str, plan: dict, finished: dict) -> None:
    """The plan's digest and the finished shards, replaced atomically."""
    text = json.dumps({"plan": fingerprint(plan), "finished": finished}).encode()
    atomic_write(os.path.join(dst, PROGRESS), lambda out: out.write(text))


def write_all(src: str, dst: str, plan: dict, finished: dict) -> None:
    """Write every shard not finished yet, recording each as it is done."""
    total = sum(len(s["shards"]) for s in plan["splits"].values())
    with tqdm(total=total, initial=len(finished), unit="shard", desc="shards") as bar:
        for split, part in plan["splits"].items():
            for shard in part["shards"]:
                if shard["name"] in finished:
                    continue
                keys = [f"{split}_{shard['first'] + i:08d}" for i in range(len(shard["samples"]))]
                path = os.path.join(dst, shard["name"])
                folder = os.path.join(src, split)
                finished[shard["name"]] = write_shard(path, folder, shard["samples"], keys)
                save_progress(dst, plan, finished)
                bar.update()


def index_of(plan: dict, finished: dict) -> dict:
    """shards.json: the classes, and per split the count and each shard's count and SHA-256."""
    splits = {
        split: {"count": part["count"],
                "shards": [{"name": s["name"], "count": len(s["samples"]),
                            "sha256": finished[s["name"]]} for s in part["shards"]]}
        for split, part in plan["splits"].items()
    }  # fmt: skip
    return {"classes": plan["classes"], "splits": splits}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="a folder with train/<class>/<image> and val/<class>/<image>")
    parser.add_argument("dst", help="an empty or new folder for the shards")
    parser.add_argument("--shard-size", type=shard_limit, default=shard_limit("1GB"),
                        help="bytes (1GB, 500MB, 64MiB) or samples (5000) per shard")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the training samples' shuffle")
    args = parser.parse_args(argv)
    try:
        with stops_raise("writing shards"):
            plan = make_plan(args.src, args.shard_size, args.seed)
            finished = start_or_resume(args.dst, plan)
            write_all(args.src, args.dst, plan, finished)
            text = json.dumps(index_of(plan, finished), indent=1).encode()
            atomic_write(os.path.join(args.dst, "shards.json"), lambda out: out.write(text))
    except Stopped as exc:
        return stopped_status(exc, "the finished shards are kept: the same command continues")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {file_error(exc)}; {os_advice(exc)}", file=sys.stderr)
        return 2
    os.remove(os.path.join(args.dst, PROGRESS))
    counts = {split: part["count"] for split, part in plan["splits"].items()}
    print(f"=> {counts['train']} training and {counts['val']} validation images in"
          f" {len(finished)} shards in {args.dst}")  # fmt: skip
    return 0


def os_advice(exc: OSError) -> str:
    """What to do about a file that could not be read or written."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            "free some space there, then run the same command again: it keeps the finished shards"
        )
    if exc.errno == errno.EIO:
        return "the disk failed to read or write it: check the device (or remove a damaged image)"
    return "fix that, then run the same command again: it keeps the finished shards"


if __name__ == "__main__":
    sys.exit(main())
