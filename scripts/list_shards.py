"""Write shards.json for WebDataset tar shards made elsewhere, so that -dataset imagenet trains on
them where they are (-data: the folder of shards.json; -shardSource: where the shards are):

  python scripts/list_shards.py DST --train 'pipe:curl -sf https://host/train-{000000..000146}.tar'
      --val 'pipe:curl -sf https://host/val-{000000..000006}.tar' [--classes names.txt]

Each shard is read once, as a stream (a command's output is enough), to count its samples (an
image KEY.jpg / .png / ... and its label KEY.cls), check their labels and take its SHA-256.
Patterns expand as WebDataset's do: {000000..000146} (zero-padded ranges) and {a,b}. The
classes are the lines of --classes, else the numbers 0 to the highest label. It prints the
-shardSource to train with.
"""

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints import atomic_write  # noqa: E402 - after the root is on the path
from datasets.commands import end_group, start_session  # noqa: E402
from datasets.shards import INDEX, SHARD_NAME, sample_members  # noqa: E402
from errors import Stopped, UsageError, file_error, quoted, stopped_status, stops_raise  # noqa: E402

BRACE = re.compile(r"\{([^{}]*)\}")


def expand(pattern: str) -> list[str]:
    """The names a WebDataset pattern stands for: {a..b} a zero-padded range, {x,y} a list."""
    match = BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail, inside = pattern[: match.start()], pattern[match.end() :], match.group(1)
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", inside)
    if bounds:
        first, last = bounds.groups()
        choices = [f"{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    else:
        choices = inside.split(",")
    return [head + choice + rest for choice in choices for rest in expand(tail)]


def shard_name(url: str) -> str:
    """The file name of a shard's path or pipe: command (its last word's), checked: the
    name that shards.json lists, which training refuses unless it is a plain file name."""
    name = os.path.basename(url.split()[-1] if url.startswith("pipe:") else url)
    if not SHARD_NAME.fullmatch(name):
        raise UsageError(
            f"the shard {url!r} ends in {quoted(name)}, not a plain file name ending in"
            " .tar (letters, digits, and . _ - + = @ , after the first): name the shards so"
        )
    return name


class HashingReader:
    """A binary stream whose bytes are hashed as they are read."""

    def __init__(self, stream):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> str:
        """Read to the end (a tar's padding) and give the SHA-256 of everything."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def read_stream(url: str, reader) -> dict:
    """{name, count, sha256} of the shard at url (a path or pipe: command), read by reader."""
    name, process, failure = shard_name(url), None, None
    try:
        if url.startswith("pipe:"):  # a session of its own: ended whole if we are stopped
            process = start_session(url[5:], stdout=subprocess.PIPE)
            source = process.stdout
        else:
            source = open(url, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read shard {name} ({url}): {exc.strerror}") from None
    try:
        stream = HashingReader(source)
        count = reader(name, stream)
        digest = stream.drain()
    except (tarfile.TarError, OSError, EOFError) as exc:
        failure = exc  # the command's exit status, if it failed, says more: waited for below
    except BaseException:  # a bad sample, a stop request: the command must not go on
        if process is not None:
            end_group(process)
        raise
    finally:
        source.close()
    if process is not None and process.wait():
        raise UsageError(f"cannot read shard {name}: `{url[5:]}` exited with {process.returncode}")
    if failure is not None:
        raise UsageError(f"cannot read shard {name} ({url}): {failure}")
    return {"name": name, "count": count, "sha256": digest}


def count_samples(name: str, stream, labels_seen: set[int]) -> int:
    """The samples of one tar stream: each image needs its KEY.cls, a class index."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        images, labels = sample_members(tar, name)
    for key in sorted(images):
        text = labels.get(key)
        if text is None or not text.strip().isdigit():
            raise UsageError(f"shard {name}: sample {key} has no class index in {key}.cls")
        labels_seen.add(int(text))
    return len(images)


def listing(patterns: dict[str, str], classes: list[str] | None) -> dict:
    """shards.json for the train and val patterns, every shard read once."""
    urls = {split: expand(pattern) for split, pattern in patterns.items()}
    for split, found in urls.items():
        if not found:
            raise UsageError(
                f"--{split} {patterns[split]!r} names no shard (a range that counts down, such"
                " as {000003..000000}?); nothing was written"
            )
    names = [shard_name(url) for found in urls.values() for url in found]  # all checked first
    twice = sorted(name for name, times in collections.Counter(names).items() if times > 1)
    if twice:
        raise UsageError(f"two shards are named {twice[0]}: -shardSource could not tell them"
                         " apart; give each shard its own file name")  # fmt: skip
    seen, splits = set(), {}
    with tqdm(total=len(names), unit="shard", desc="shards") as bar:
        for split, found in urls.items():
            shards = []
            for url in found:
                shards.append(read_stream(url, lambda n, s: count_samples(n, s, seen)))
                bar.update()
            splits[split] = {"count": sum(s["count"] for s in shards), "shards": shards}
    classes = classes or [str(i) for i in range(max(seen, default=-1) + 1)]
    if seen and max(seen) >= len(classes):
        raise UsageError(f"a label is {max(seen)}, beyond the {len(classes)} classes of --classes")
    if not classes:
        raise UsageError("the shards hold no samples: nothing to list")
    return {"classes": classes, "splits": splits}


def source_of(patterns: dict[str, str]) -> str | None:
    """The -shardSource that gives every shard: the patterns with the file name as {shard},
    when they share everything else."""
    sources = {expand(p)[0].replace(shard_name(expand(p)[0]), "{shard}") for p in patterns.values()}
    return sources.pop() if len(sources) == 1 else None


def list_into(target: str, args: argparse.Namespace) -> dict:
    """Read the shards and write their listing to target (atomically: all or nothing)."""
    if os.path.exists(target):
        raise UsageError(f"{target} exists: remove it first, or give another folder")
    classes = None
    if args.classes:
        try:
            with open(args.classes) as handle:
                classes = [line.strip() for line in handle if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --classes {args.classes}: {exc}") from None
    content = listing({"train": args.train, "val": args.val}, classes)
    os.makedirs(args.dst, exist_ok=True)
    text = json.dumps(content, indent=1).encode()
    atomic_write(target, lambda stream: stream.write(text))
    return content


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dst", help="a folder for shards.json (made if missing)")
    parser.add_argument("--train", required=True, help="the training shards' pattern")
    parser.add_argument("--val", required=True, help="the validation shards' pattern")
    parser.add_argument("--classes", help="a text file with a class name per line, in label order")
    args = parser.parse_args(argv)
    target = os.path.join(args.dst, INDEX)
    try:
        with stops_raise("listing shards"):
            content = list_into(target, args)
    except Stopped as exc:
        return stopped_status(exc, f"nothing was written ({target})")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {file_error(exc)}; nothing was written", file=sys.stderr)
        return 2
    source = source_of({"train": args.train, "val": args.val})
    counts = {split: part["count"] for split, part in content["splits"].items()}
    print(f"=> {counts['train']} training and {counts['val']} validation images listed in {target}")
    if source:
        print(f"=> train with: -data {args.dst} -shardSource '{source}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
