"""-dataset imagenet on tar shards (scripts/make_shards.py's): the same validation as the class
folders, an exact resume mid-epoch, and every bad shard one line naming it."""

import io
import json
import os
import re
import shutil
import signal
import tarfile

import pytest
import runs
import torch

import checkpoints
from datasets import shards

FLAGS = ("-dataset imagenet -netType resnet -depth 18 -batchSize 4 -LR 0.01 -cropSize 64"
         " -manualSeed 5 -tensorboard false").split()  # fmt: skip


def run(data, save, *flags):
    return runs.main_run([*FLAGS, "-data", data, "-save", save, "-gen", f"{save}-gen", *flags])


def test_training_on_shards_stopped_mid_epoch_resumes_to_the_same_weights(shards_root, tmp_path):
    flags = ["-nEpochs", "2", "-nThreads", "2", "-checkpointEvery", "1"]
    expected, got = runs.stopped_and_resumed(
        lambda save, gen: [*FLAGS, "-data", shards_root, "-save", save, "-gen", gen, *flags],
        " | Epoch: [1][2/", tmp_path)  # fmt: skip
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert checkpoints.latest(str(tmp_path / "cut")).epoch == 2


def damaged_copy(shards_root, tmp_path, damage) -> str:
    """A copy of the shards with damage(folder) done to it."""
    folder = tmp_path / "damaged"
    folder.mkdir(parents=True)
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
    def miscount(folder, both):
        listing = json.loads((folder / "shards.json").read_text())
        listing["splits"]["train"]["shards"][1]["count"] += 1
        listing["splits"]["train"]["count"] += both
        (folder / "shards.json").write_text(json.dumps(listing))

    split = run(damaged_copy(shards_root, tmp_path / "a", lambda f: miscount(f, 0)), tmp_path / "a")
    assert split.returncode == 2 and split.stderr.endswith(
        "shards.json: the train shards' counts add up to 16, the train count is 15; write the"
        " listing again\n"
    )
    shard = run(damaged_copy(shards_root, tmp_path / "b", lambda f: miscount(f, 1)), tmp_path / "b")
    assert shard.returncode == 2 and re.fullmatch(
        r"error: shard \S+/train-000001\.tar holds 4 samples, shards\.json says 5; write the"
        r" shards again\n", shard.stderr)  # fmt: skip
    assert not (tmp_path / "a" / "run").exists() and not (tmp_path / "b" / "run").exists()


def test_jpegs_of_shards_decode_on_the_device_too(shards_root, tmp_path):
    done = run(shards_root, tmp_path / "run", "-nEpochs", "1", "-nThreads", "2",
               "-decodeOnDevice", "true")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert " * Finished epoch # 1" in done.stdout


def listing_of(shards_root, tmp_path) -> str:
    """A folder holding shards.json alone: the shards are fetched (-shardSource)."""
    folder = tmp_path / "listing"
    folder.mkdir()
    shutil.copy(os.path.join(shards_root, "shards.json"), folder)
    return str(folder)


def test_fetched_shards_stopped_mid_epoch_resume_to_the_same_weights(shards_root, tmp_path):
    """Shards piped in by a command, shuffled a window of shards at a time: the loader
    workers share one spool, and the order resumes exactly."""
    listing = listing_of(shards_root, tmp_path)
    flags = ["-nEpochs", "2", "-nThreads", "2", "-checkpointEvery", "1", "-shuffleBuffer", "4",
             "-shardSource", f"pipe:cat {shards_root}/{{shard}}"]  # fmt: skip
    expected, got = runs.stopped_and_resumed(
        lambda save, gen: [*FLAGS, "-data", listing, "-save", save, "-gen", gen, *flags],
        " | Epoch: [2][2/", tmp_path)  # fmt: skip
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    spool = [os.listdir(p) for p in (tmp_path / "whole-gen").glob("spool-*")]
    assert len(spool) == 1 and all(not name.endswith(".partial") for name in spool[0])


def test_the_spool_keeps_the_most_recently_used_shards(shards_root, tmp_path):
    spool = shards.Spool(os.path.join(shards_root, "{shard}"), str(tmp_path / "spool"), keep=2)
    listing = json.loads(open(os.path.join(shards_root, "shards.json")).read())
    for shard in listing["splits"]["train"]["shards"]:
        path = spool.fetched(shard["name"], shard["sha256"])
        assert (
            open(path, "rb").read() == open(os.path.join(shards_root, shard["name"]), "rb").read()
        )
    kept = sorted(name for name in os.listdir(tmp_path / "spool") if name.endswith(".tar"))
    assert kept == [s["name"] for s in listing["splits"]["train"]["shards"][-2:]]


FETCH_FAILURES = {
    "failing command": ("pipe:echo no route to {{shard}} >&2; exit 6",
                        r"cannot fetch shard (train-00000\d\.tar): `echo no route to \1 >&2; exit 6`"
                        r" exited with 6: no route to \1"),
    "another shard": ("pipe:cat {root}/val-000000.tar # {{shard}}",
                      r"shard train-00000\d\.tar from pipe:cat \S+/val-000000\.tar # \S+ is not the one"
                      r" shards\.json lists \(its SHA-256 differs\)"),
    "missing file": ("{root}/missing/{{shard}}",
                     r"cannot fetch shard train-00000\d\.tar from \S+/missing/train-00000\d\.tar:"
                     r" No such file or directory"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(FETCH_FAILURES))
@pytest.mark.parametrize("threads", ["0", "2"])
def test_a_shard_that_cannot_be_fetched_is_one_line_naming_it(kind, threads, shards_root, tmp_path):
    source, says = FETCH_FAILURES[kind]
    done = run(listing_of(shards_root, tmp_path), tmp_path / "run", "-nEpochs", "1",
               "-nThreads", threads, "-shardSource", source.format(root=shards_root))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(rf"error: {says}", done.stderr), done.stderr


def test_a_shard_source_must_name_each_shard_and_have_its_listing(shards_root, jpeg_root, tmp_path):
    unnamed = run(listing_of(shards_root, tmp_path), tmp_path / "a", "-shardSource", "pipe:cat x")
    assert unnamed.returncode == 2 and unnamed.stderr == (
        "error: -shardSource 'pipe:cat x' must say where each shard is with {shard} (e.g."
        " 'pipe:curl -sf https://host/shards/{shard}')\n"
    )
    unlisted = run(jpeg_root, tmp_path / "b", "-shardSource", "pipe:cat {shard}")
    assert unlisted.returncode == 2 and unlisted.stderr == (
        f"error: -shardSource needs the shards' listing in -data: {jpeg_root} holds no"
        " shards.json (copy it there from the shards)\n"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resuming_on_shards_of_other_classes_is_refused_before_any_step(shards_root, tmp_path):
    trained = run(shards_root, tmp_path / "run", "-nEpochs", "1", "-nThreads", "0")
    assert trained.returncode == 0, trained.stderr
    before = {name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")}

    def reorder(folder):
        listing = json.loads((folder / "shards.json").read_text())
        listing["classes"] = listing["classes"][1:] + listing["classes"][:1]
        (folder / "shards.json").write_text(json.dumps(listing))

    data = damaged_copy(shards_root, tmp_path, reorder)
    resumed = run(data, tmp_path / "run", "-nEpochs", "2", "-resume", tmp_path / "run")
    assert resumed.returncode == 2 and resumed.stderr == (
        f"error: the data's classes are not those {tmp_path / 'run' / 'model_1.pth'} was trained"
        " on (3 against 3; class 0 is 'apple' in the data, 'Zebra' in the checkpoint): give the"
        " data it was trained on, or start from its weights with -retrain\n"
    )
    assert {
        name: (tmp_path / "run" / name).read_bytes() for name in os.listdir(tmp_path / "run")
    } == before


def stopped_inside_epoch_1(data, save, *flags):
    """A run on data stopped by SIGTERM at epoch 1's second iteration (a mid-epoch checkpoint)."""

    def terminate(line):
        if line.startswith(" | Epoch: [1][2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    argv = [*FLAGS, "-data", data, "-save", save, "-gen", f"{save}-gen", "-nEpochs", "2",
            "-nThreads", "0", *flags]  # fmt: skip
    stopped = runs.main_run(argv, on_line=terminate)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr


def test_a_mid_epoch_resume_on_another_layout_is_refused(jpeg_root, shards_root, tmp_path):
    save = tmp_path / "run"
    stopped_inside_epoch_1(jpeg_root, save)
    before = {name: (save / name).read_bytes() for name in os.listdir(save)}
    resumed = run(shards_root, save, "-nEpochs", "2", "-nThreads", "0", "-resume", save)
    assert resumed.returncode == 2 and resumed.stderr == (
        f"error: {save}/model_1_iter2.pth stopped inside epoch 1, in an order of class folders of"
        " 15 images; this data is tar shards of 15 images, whose order differs: resume on the"
        " data it stopped on (at least to the end of epoch 1: then any layout of the same"
        " images goes on exactly)\n"
    )
    assert {name: (save / name).read_bytes() for name in os.listdir(save)} == before
    listing = listing_of(shards_root, tmp_path)  # fetched, with another window: refused too
    fetched = ["-shardSource", f"pipe:cat {shards_root}/{{shard}}"]
    stopped_inside_epoch_1(listing, tmp_path / "fetched", *fetched, "-shuffleBuffer", "4")
    other = run(listing, tmp_path / "fetched", "-nEpochs", "2", "-nThreads", "0", *fetched,
                "-shuffleBuffer", "8", "-resume", tmp_path / "fetched")  # fmt: skip
    assert other.returncode == 2 and "in an order of fetched tar shards of 15 images," \
        " -shuffleBuffer 4; this data is fetched tar shards of 15 images, -shuffleBuffer 8," \
        in other.stderr  # fmt: skip


def test_at_an_epoch_boundary_another_layout_goes_on(jpeg_root, shards_root, tmp_path):
    save = tmp_path / "run"
    first = run(jpeg_root, save, "-nEpochs", "1", "-nThreads", "0")
    assert first.returncode == 0, first.stderr
    resumed = run(shards_root, save, "-nEpochs", "2", "-nThreads", "0", "-resume", save)
    assert resumed.returncode == 0, resumed.stderr
    assert " * Finished epoch # 2" in resumed.stdout


@pytest.mark.parametrize("block", ["a lock that is a folder", "a spool that is a file"])
@pytest.mark.parametrize("threads", ["0", "2"])
def test_a_spool_in_the_way_is_named_not_blamed_on_an_image(block, threads, shards_root, tmp_path):
    listing = listing_of(shards_root, tmp_path)
    spool = tmp_path / "run-gen" / f"spool-{shards.read_listing(listing)[1]}"
    if block == "a spool that is a file":
        spool.parent.mkdir()
        spool.write_text("not a folder")
    else:
        for shard in json.loads((tmp_path / "listing" / "shards.json").read_text())["splits"][
            "train"
        ]["shards"]:
            (spool / f"{shard['name']}.lock").mkdir(parents=True)
    done = run(listing, tmp_path / "run", "-nEpochs", "1", "-nThreads", threads,
               "-shardSource", f"pipe:cat {shards_root}/{{shard}}")  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: the shard spool {spool} cannot be used ("), done.stderr
    assert done.stderr.endswith("): remove what is in the way there, or give another -gen\n")


def hanging_source(shards_root, tmp_path, hang_on: str) -> str:
    """A -shardSource that copies each shard, except, once tmp_path/hang exists, a shard
    whose name starts with hang_on: for that one it signals this process (the run, in
    process) with SIGTERM, once, and then waits for ever, as a hung download would."""
    return (f"pipe:case {{shard}} in {hang_on}*) if [ -e {tmp_path}/hang ]; then"
            f" echo $$ >> {tmp_path}/pids; mkdir {tmp_path}/signalled 2>/dev/null &&"
            f" kill -TERM {os.getpid()}; exec sleep 120; fi;; esac; cat {shards_root}/{{shard}}")  # fmt: skip


def fetch_ended(tmp_path) -> bool:
    """Whether the hung fetches' commands are gone (not even a zombie left unreaped)."""
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    return pids and not any(os.path.exists(f"/proc/{pid}") for pid in pids)


@pytest.mark.parametrize(("threads", "hang_on"), [("0", "train"), ("2", "val")])
def test_a_stop_while_a_fetch_hangs_saves_and_ends_the_fetch(
    threads, hang_on, shards_root, tmp_path
):
    listing, save = listing_of(shards_root, tmp_path), tmp_path / "run"

    def hang_from_now(line):
        if line.startswith(" | Epoch: [1][1/"):
            (tmp_path / "hang").touch()

    flags = [*FLAGS, "-data", listing, "-save", save, "-gen", tmp_path / "gen", "-nEpochs", "2",
             "-nThreads", threads, "-shuffleBuffer", "4",
             "-shardSource", hanging_source(shards_root, tmp_path, hang_on)]  # fmt: skip
    stopped = runs.main_run(flags, on_line=hang_from_now)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    where = "at epoch 1, iteration 1, while waiting for data" if hang_on == "train" else (
        "while waiting for data")  # fmt: skip
    assert f"=> Stopped by SIGTERM {where}; checkpoint saved" in stopped.stdout
    assert fetch_ended(tmp_path)
    saved = checkpoints.latest(str(save))
    assert (saved.epoch, saved.iteration) == ((1, 1) if hang_on == "train" else (1, 4))
    (tmp_path / "hang").unlink()
    resumed = runs.main_run([*flags, "-resume", save])
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoints.latest(str(save)).epoch == 2


def test_a_fetch_that_takes_too_long_is_ended_and_named(shards_root, tmp_path):
    (tmp_path / "hang").touch()
    done = run(listing_of(shards_root, tmp_path), tmp_path / "run", "-nEpochs", "1",
               "-nThreads", "2", "-fetchTimeout", "1", "-shardSource",
               hanging_source(shards_root, tmp_path, "train").replace("kill -TERM", "echo"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.fullmatch(r"error: cannot fetch shard train-00000\d\.tar: `.*` took over"
                        r" -fetchTimeout 1 s \(ended\); check the command, or give a longer"
                        r" -fetchTimeout\n", done.stderr), done.stderr  # fmt: skip
    assert fetch_ended(tmp_path)


@pytest.mark.parametrize("layout", ["class folders", "tar shards"])
def test_window_and_fetch_flags_where_they_do_nothing_are_refused(
    layout, jpeg_root, shards_root, tmp_path
):
    data = jpeg_root if layout == "class folders" else shards_root
    window = run(data, tmp_path / "a", "-nEpochs", "1", "-shuffleBuffer", "64")
    assert window.returncode == 2 and window.stderr == (
        "error: -shuffleBuffer is for data read a block at a time (parquet files, shards fetched"
        f" by -shardSource); {data} holds {layout}, shuffled whole: drop -shuffleBuffer\n"
    )
    timeout = run(data, tmp_path / "b", "-nEpochs", "1", "-fetchTimeout", "5")
    assert timeout.returncode == 2 and timeout.stderr == (
        "error: -fetchTimeout is for shards fetched by -shardSource: drop it, or give"
        " -shardSource\n"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
