"""-dataset imagenet on tar shards (scripts/make_shards.py's): the same validation as the class
folders, an exact resume mid-epoch, and every bad shard one line naming it."""

import io
import json
import os
import re
import signal
import tarfile

import pytest
import runs
import torch

import checkpoints

FLAGS = ("-dataset imagenet -netType resnet -depth 18 -batchSize 4 -LR 0.01 -cropSize 64"
         " -manualSeed 5 -tensorboard false").split()  # fmt: skip


def run(data, save, *flags):
    return runs.main_run([*FLAGS, "-data", data, "-save", save, "-gen", f"{save}-gen", *flags])


def test_training_on_shards_stopped_mid_epoch_resumes_to_the_same_weights(shards_root, tmp_path):
    flags = ["-nEpochs", "2", "-nThreads", "2", "-checkpointEvery", "1"]
    whole = run(shards_root, tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr
    assert "=> Training epoch # 2" in whole.stdout

    def terminate(line):
        if line.startswith(" | Epoch: [1][2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = runs.main_run([*FLAGS, "-data", shards_root, "-save", tmp_path / "cut",
                             "-gen", tmp_path / "cut-gen", *flags], on_line=terminate)  # fmt: skip
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert checkpoints.latest(str(tmp_path / "cut")).epoch == 1
    resumed = run(shards_root, tmp_path / "cut", *flags, "-resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = (torch.load(tmp_path / n / "model_2.pth", weights_only=True)["model"]
                     for n in ("whole", "cut"))  # fmt: skip
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def damaged_copy(shards_root, tmp_path, damage) -> str:
    """A copy of the shards with damage(folder) done to it."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in os.listdir(shards_root):
        (folder / name).write_bytes(open(os.path.join(shards_root, name), "rb").read())
    damage(folder)
    return str(folder)


def rewrite_first_shard(folder, change) -> None:
    """train-000000.tar with change(name, data) -> (name, data) or None (dropped)."""
    path = folder / "train-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in filter(None, (change(n, d) for n, d in members)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


DAMAGES = {
    "missing shard": (lambda f: (f / "train-000001.tar").unlink(),
                      r"shard missing: \S+/train-000001\.tar \(listed in shards\.json\)"),
    "truncated shard": (lambda f: (f / "train-000000.tar").write_bytes(
                            (f / "train-000000.tar").read_bytes()[:700]),
                        r"cannot read shard \S+/train-000000\.tar"),
    "no label": (lambda f: rewrite_first_shard(f, lambda n, d: None if n.endswith(".cls") and
                                               n.startswith("train_00000000") else (n, d)),
                 r"shard \S+/train-000000\.tar: sample train_00000000 has no label"),
    "label out of range": (lambda f: rewrite_first_shard(f, lambda n, d: (n, b"7")
                                                         if n.endswith(".cls") else (n, d)),
                           r"shard \S+/train-000000\.tar: train_00000000\.cls is 7, beyond the 3 classes"),
    "foreign listing": (lambda f: (f / "shards.json").write_text(json.dumps(
                            {"classes": [1, 2], "splits": {"train": {"count": 0, "shards": []},
                                                           "val": {"count": 0, "shards": []}}})),
                        r"\S+/shards\.json is not make_shards\.py's listing"),
    "garbage listing": (lambda f: (f / "shards.json").write_text("{"),
                        r"cannot read \S+/shards\.json"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_a_bad_shard_is_one_line_naming_it_and_nothing_is_written(kind, shards_root, tmp_path):
    damage, says = DAMAGES[kind]
    data = damaged_copy(shards_root, tmp_path, damage)
    done = run(data, tmp_path / "run", "-nEpochs", "1", "-nThreads", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(rf"error: {says}", done.stderr), done.stderr
    assert not (tmp_path / "run").exists()


def test_the_listing_counts_are_checked_against_the_shards(shards_root, tmp_path):
    def miscount(folder):
        listing = json.loads((folder / "shards.json").read_text())
        listing["splits"]["train"]["count"] += 1
        (folder / "shards.json").write_text(json.dumps(listing))

    done = run(damaged_copy(shards_root, tmp_path, miscount), tmp_path / "run", "-nEpochs", "1")
    assert done.returncode == 2 and "samples in the shards, shards.json says" in done.stderr


def test_jpegs_of_shards_decode_on_the_device_too(shards_root, tmp_path):
    done = run(shards_root, tmp_path / "run", "-nEpochs", "1", "-nThreads", "2",
               "-decodeOnDevice", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert " * Finished epoch # 1" in done.stdout
