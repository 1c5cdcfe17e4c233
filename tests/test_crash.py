"""Crash safety (issue: never lose a run): kills at any instant, signals, bad data, NaNs."""

import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest
import runs
import torch
from conftest import with_flags
from PIL import Image

import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ResNet-8 on the 20 real CIFAR-10 images (in-memory loader): 5 iterations an epoch.
FLAGS = "-dataset cifar10 -netType resnet -depth 8 -batchSize 4 -nEpochs 3 -manualSeed 5 -checkpointEvery 2"
# ResNet-18 on the 15 + 5 real ImageNet JPEGs (DataLoader with 2 workers): 4 iterations an epoch.
FOLDER_FLAGS = "-dataset imagenet -netType resnet -depth 18 -batchSize 4 -nEpochs 2 -manualSeed 5 -checkpointEvery 2 -LR 0.01 -cropSize 64"
# The modern recipe's options, all at once, on the CIFAR run.
RECIPE_FLAGS = (
    FLAGS + " -lrSchedule cosine -warmupEpochs 1 -mixup 0.2 -cutmix 1.0"
    " -labelSmoothing 0.1 -ema 0.99 -emaEvery 2 -normWeightDecay 0 -clipGradNorm 5"
    " -autoAugment ta_wide -randomErasing 0.25 -erasingStyle paper -repeatedAug 2"
    " -loss bce -bceTargetThreshold 0.2 -optimizer adamw -dropPath 0.1 -headDropout 0.1"
    " -accumSteps 2"
)
# config -> (flags, loader workers, final epoch, files to die inside of, random kills)
CONFIGS = {
    "cifar-in-memory": (FLAGS, 0, 3, ["model_1_iter4.pth", "latest.pth", "optimState_2.pth"], 3),
    "cifar-recipe": (RECIPE_FLAGS, 0, 3, ["model_1_iter4.pth", "model_2_iter2.pth"], 1),
    "folder-2-workers": (FOLDER_FLAGS, 2, 2, ["model_1_iter4.pth", "optimState_1.pth"], 1),
    # The same JPEGs as the Hub's parquet (row groups read whole, shuffled in windows) and as
    # tar shards fetched by a command into a spool the workers share.
    "parquet-2-workers": (FOLDER_FLAGS + " -shuffleBuffer 8", 2, 2, ["model_1_iter4.pth"], 0),
    "fetched-shards-2-workers": (
        FOLDER_FLAGS + " -shuffleBuffer 4",
        2,
        2,
        ["model_1_iter4.pth"],
        0,
    ),
}


def data_of(config: str, request, folder) -> tuple[str, list[str]]:
    """The -data of a config and the flags that go with it (fixtures made only when used)."""
    if config.startswith("cifar"):
        return request.getfixturevalue("cifar10_root"), []
    if config.startswith("parquet"):
        return os.path.join(request.getfixturevalue("hub_files"), "parquet"), []
    if config.startswith("fetched"):
        shards = request.getfixturevalue("shards_root")
        shutil.copy(os.path.join(shards, "shards.json"), folder)  # the listing alone
        return str(folder), ["-shardSource", f"pipe:cat {shards}/{{shard}}"]
    return request.getfixturevalue("jpeg_root"), []


def command(data, save, threads, extra=(), flags=FLAGS):
    """main.py's arguments for a run of flags with extra ones."""
    options = with_flags([*flags.split(), "-nThreads", str(threads)], list(extra))
    return [*options, "-data", data, "-save", str(save), "-gen", f"{save}-gen"]


def final_weights(save, epoch=3):
    """The trained weights of the epoch's model file, and its -ema weights if any."""
    record = torch.load(os.path.join(save, f"model_{epoch}.pth"), weights_only=True)
    averaged = record.get("ema", {"model": {}})["model"]
    return {**record["model"], **{f"ema:{k}": v for k, v in averaged.items()}}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", params=list(CONFIGS))
def reference(request, tmp_path_factory):
    """An uninterrupted run: (command maker, config, final weights, its seconds from the
    first iteration on)."""
    flags, threads, last_epoch, _, _ = CONFIGS[request.param]
    data, data_flags = data_of(request.param, request, tmp_path_factory.mktemp("listing"))

    def make(save, extra=()):
        return command(data, save, threads, [*data_flags, *extra], flags)

    save = tmp_path_factory.mktemp("reference")
    trained = []  # when the first iteration was printed: the training time follows

    def note_the_first_iteration(line):
        if line.startswith(" | Epoch") and not trained:
            trained.append(time.monotonic())

    done = runs.main_run(make(save), on_line=note_the_first_iteration)
    assert done.returncode == 0, done.stderr
    seconds = time.monotonic() - trained[0]
    return make, CONFIGS[request.param], final_weights(save, last_epoch), seconds


def run_killed_inside_write(make, save, file_name):
    """A resumed run as a process of its own that kills itself while it writes file_name."""
    env = {**os.environ, checkpoints.KILL_BEFORE_RENAME: file_name}
    done = runs.main_process(make(save, ["-resume", str(save)]), env=env)
    assert done.returncode == -signal.SIGKILL
    assert any(n.startswith(".partial-") for n in os.listdir(save))  # died mid-write


def run_killed_after(make, save, seconds):
    """A resumed run as a process of its own, killed `seconds` after it printed its first
    iteration (the interpreter's start is not what the kill should land in)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = runs.start_main(make(save, ["-resume", str(save)]), env=env, stdout=subprocess.PIPE)
    for line in process.stdout:
        if line.startswith(" | Epoch"):
            break
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def test_killed_runs_resume_to_bitwise_the_same_weights(reference, tmp_path):
    make, (_, threads, last_epoch, kill_files, random_kills), expected, seconds = reference
    save = tmp_path / "save"
    save.mkdir()
    run_killed_inside_write(make, save, kill_files[0])
    assert checkpoints.latest(str(save)).iteration == 2  # the previous set is the one loaded
    for name in kill_files[1:]:
        run_killed_inside_write(make, save, name)
    rng = random.Random(threads)
    for _ in range(random_kills):
        run_killed_after(make, save, rng.uniform(0.2, 0.8) * seconds)  # inside the run
    done = runs.main_run(make(save, ["-resume", str(save)]))
    assert done.returncode == 0, done.stderr
    assert_bitwise_equal(final_weights(save, last_epoch), expected)
    assert not any(n.startswith(".partial-") or "_iter" in n for n in os.listdir(save))


def test_sigterm_saves_within_seconds_and_resume_continues_at_that_iteration(reference, tmp_path):
    make, (_, _, last_epoch, _, _), expected, _ = reference
    save = tmp_path / "save"
    sent = {}

    def terminate_at_iteration_2_of_epoch_2(line):
        if line.startswith(" | Epoch: [2][2/") and not sent:
            os.kill(os.getpid(), signal.SIGTERM)
            sent["at"] = time.monotonic()
            sent["total"] = int(re.match(r" \| Epoch: \[2\]\[2/(\d+)\]", line).group(1))

    done = runs.main_run(make(save), on_line=terminate_at_iteration_2_of_epoch_2)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert time.monotonic() - sent["at"] < 10
    total = sent["total"]
    # The signal lands during iteration 2 or a later one; training stops right after it.
    rest = done.stdout.split(" | Epoch: [2][2/", 1)[1]
    stopped = re.search(r"=> Stopped by SIGTERM (at epoch 2, iteration (\d)|after epoch 2)", rest)
    iteration = int(stopped.group(2) or 0)
    found = checkpoints.latest(str(save))
    assert (found.epoch, found.iteration) == (2, iteration)
    resumed = runs.main_run(make(save, ["-resume", str(save)]))
    assert resumed.returncode == 0, resumed.stderr
    first_line = next(
        (line for line in resumed.stdout.splitlines() if line.startswith(" | Epoch")), ""
    )
    if 0 < iteration < total:
        assert first_line.startswith(f" | Epoch: [2][{iteration + 1}/{total}]")
    assert_bitwise_equal(final_weights(save, last_epoch), expected)


def test_keep_checkpoints_keeps_the_last_k_epochs_and_the_best(cifar10_root, tmp_path):
    save = tmp_path / "save"
    done = runs.main_run(command(cifar10_root, save, 0, ["-nEpochs", "4", "-keepCheckpoints", "2"]))
    assert done.returncode == 0, done.stderr
    names = sorted(n for n in os.listdir(save) if n.endswith(".pth"))
    assert names == ["latest.pth", "model_3.pth", "model_4.pth", "model_best.pth",
                     "optimState_3.pth", "optimState_4.pth"]  # fmt: skip


def test_nan_loss_stops_before_saving_and_keeps_the_last_good_checkpoint(cifar10_root, tmp_path):
    save = tmp_path / "save"
    first = runs.main_run(command(cifar10_root, save, 0, ["-nEpochs", "1"]))
    assert first.returncode == 0, first.stderr
    before = torch.load(save / "latest.pth", weights_only=True)
    exploded = runs.main_run(
        command(
            cifar10_root, save, 0, ["-resume", str(save), "-LR", "1e30", "-checkpointEvery", "1"]
        )
    )
    assert exploded.returncode == 1
    assert exploded.stderr.startswith("error: loss is") and "try a lower -LR" in exploded.stderr
    bad = int(re.search(r"at epoch 2, iteration (\d+)", exploded.stderr).group(1))
    after = checkpoints.latest(str(save))
    # The last checkpoint is the step before the bad one: nothing of the bad step was saved.
    expected = (2, bad - 1) if bad > 1 else (before["epoch"], before["iteration"])
    assert (after.epoch, after.iteration) == expected
    assert all(
        torch.isfinite(v).all() for v in after.model.weights.values() if v.is_floating_point()
    )


@pytest.fixture
def folder_with_bad_images(jpeg_root, tmp_path):
    """A copy of the JPEG tree plus a truncated JPEG, an empty file and a fake PNG in train/."""
    root = tmp_path / "data"
    shutil.copytree(jpeg_root, root)
    real = next((root / "train" / "apple").iterdir()).read_bytes()
    (root / "train" / "apple" / "truncated.jpg").write_bytes(real[: len(real) // 3])
    (root / "train" / "apple" / "empty.jpg").write_bytes(b"")
    (root / "train" / "banana" / "fake.png").write_text("not an image")
    return root


def folder_command(root, tmp_path, threads, extra=()):
    """main.py's arguments for an epoch of ResNet-18 on the folder root."""
    flags = "-dataset imagenet -netType resnet -depth 18 -batchSize 6 -nEpochs 1 -LR 0.01"
    return [*flags.split(), "-nThreads", str(threads), "-data", str(root),
            "-save", str(tmp_path / "save"), "-gen", str(tmp_path / "gen"), *extra]  # fmt: skip


@pytest.mark.parametrize("threads", [0, 2])
def test_a_corrupt_image_stops_with_one_line_naming_it(folder_with_bad_images, tmp_path, threads):
    done = runs.main_run(folder_command(folder_with_bad_images, tmp_path, threads))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image "), done.stderr
    assert any(name in lines[0] for name in ("truncated.jpg", "empty.jpg", "fake.png"))


def test_skip_corrupt_counts_the_skipped_images(folder_with_bad_images, tmp_path):
    done = runs.main_run(
        folder_command(folder_with_bad_images, tmp_path, 2, ["-skipCorrupt", "true"])
    )
    assert done.returncode == 0, done.stderr
    assert " | skipped 3 unreadable images" in done.stdout


def test_grey_cmyk_palette_and_alpha_images_load_as_rgb(foolbox_data, tmp_path):
    from datasets.decoding import decode_rgb

    source = Image.open(os.path.join(foolbox_data, "imagenet_00_243.jpg"))
    variants = {
        "grey.png": source.convert("L"),
        "cmyk.jpg": source.convert("CMYK"),
        "grey.jpg": source.convert("L"),
        "palette.png": source.convert("P"),
        "alpha.png": source.convert("RGBA"),
        "grey_alpha.png": source.convert("LA"),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
        for reduce_by, side in ((1.0, 512), (2.0, 256)):
            with Image.open(tmp_path / name) as opened:
                pixels = decode_rgb(opened, reduce_by)
            assert pixels.dtype == torch.uint8, name
            draft = name.endswith(".jpg")  # DCT scaling exists for JPEGs only
            assert pixels.shape == (3, side if draft else 512, side if draft else 512), name


def test_empty_class_folder_is_a_warning(tmp_path, capsys):
    from datasets.folder_index import build_index

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "a.jpg")
    (tmp_path / "train" / "dog").mkdir()
    index = build_index(str(tmp_path))
    assert index["classes"] == ["cat", "dog"]
    assert f"warning: no images in {tmp_path}/train/dog" in capsys.readouterr().out


def test_garbage_latest_file_is_named_and_nothing_changes(cifar10_root, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    (save / "latest.pth").write_bytes(b"\x80\x02garbage")
    done = runs.main_run(command(cifar10_root, save, 0, ["-resume", str(save)]))
    assert done.returncode == 2 and "latest.pth" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(save) == ["latest.pth"]


class DiesInTheWorker(torch.utils.data.Dataset):
    """A dataset whose loader worker is killed the way a full /dev/shm kills it."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGBUS)


def real_failure(kind: str) -> RuntimeError:
    """The exception torch itself raises when a loader worker dies or memory runs out."""
    try:
        if kind == "worker":
            list(torch.utils.data.DataLoader(DiesInTheWorker(), num_workers=1))
        elif kind == "cpu memory":
            torch.empty(2**50)  # 4 PiB: the allocator refuses
        else:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    except RuntimeError as exc:
        return exc
    raise AssertionError(f"{kind}: no failure")


@pytest.mark.parametrize(
    "kind, says",
    [
        ("worker", "a data loader worker died (DataLoader worker (pid(s) "),
        ("cpu memory", "out of memory (DefaultCPUAllocator: can't allocate memory"),
        ("gpu memory", "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)"),
    ],
)
def test_a_dead_loader_worker_or_no_memory_is_one_line_with_what_to_do(
    kind, says, monkeypatch, capsys
):
    import main

    failure = real_failure(kind)
    capsys.readouterr()  # torch's own note from the dying worker

    def run(plan):
        raise failure

    monkeypatch.setattr(main, "run", run)
    assert main.main(["-dataset", "cifar10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1
    assert "the checkpoints are intact" in err
    assert ("-nThreads" in err) if kind == "worker" else ("-batchSize" in err)
