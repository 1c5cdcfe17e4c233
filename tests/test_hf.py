"""-dataset imagenet on Hugging Face files: parquet as the Hub serves it and save_to_disk
folders, both written by the `datasets` package itself; the same validation as the class
folders, tar shards and fetched shards, an exact resume mid-epoch, each sample once per epoch over two processes, reads
kept within a window of row groups, and every bad input one line naming it."""

import io
import json
import os
import re
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import runs
import torch
from conftest import labelled_images, with_flags
from PIL import Image
from ranks import run_ranks

import datasets
from datasets import hf
from datasets.sampler import EpochSampler, grouped_order

FLAGS = ("-dataset imagenet -netType resnet -depth 18 -batchSize 4 -LR 0.01 -cropSize 64"
         " -manualSeed 5 -tensorboard false").split()  # fmt: skip


def run(data, save, *flags, on_line=None):
    argv = with_flags(
        FLAGS, [str(f) for f in ("-data", data, "-save", save, "-gen", f"{save}-gen", *flags)]
    )
    return runs.main_run(argv, on_line=on_line)


def results_line(done) -> str:
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if line.startswith(" * Results"))


def test_a_model_tests_the_same_on_every_layout_of_its_images(
    jpeg_root, shards_root, hub_files, tmp_path
):
    trained = run(jpeg_root, tmp_path / "run", "-nEpochs", "1", "-nThreads", "0")
    assert trained.returncode == 0, trained.stderr
    listing = tmp_path / "listing"  # shards.json alone: the shards are fetched
    listing.mkdir()
    shutil.copy(os.path.join(shards_root, "shards.json"), listing)
    fetched = ["-shardSource", f"pipe:cat {shards_root}/{{shard}}"]
    layouts = ((jpeg_root, []), (shards_root, []), (listing, fetched),
               (f"{hub_files}/parquet", []), (f"{hub_files}/saved", []))  # fmt: skip
    tested = [results_line(run(data, tmp_path / "run", "-testOnly", "true", "-resume",
                               tmp_path / "run", "-nThreads", "2", *flags))
              for data, flags in layouts]  # fmt: skip
    assert len(set(tested)) == 1, tested


def test_training_on_parquet_stopped_mid_epoch_resumes_to_the_same_weights(hub_files, tmp_path):
    data = f"{hub_files}/parquet"
    flags = ["-nEpochs", "2", "-nThreads", "2", "-checkpointEvery", "1", "-shuffleBuffer", "8"]
    expected, got = runs.stopped_and_resumed(
        lambda save, gen: with_flags(FLAGS, ["-data", data, "-save", str(save), "-gen", str(gen),
                                             *flags]),
        " | Epoch: [2][2/", tmp_path)  # fmt: skip
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_the_grouped_order_shuffles_whole_windows_of_blocks():
    blocks = torch.tensor([4, 4, 3, 4, 1, 4])
    starts = (torch.cumsum(blocks, 0) - blocks).tolist()
    block_of = torch.repeat_interleave(torch.arange(len(blocks)), blocks)
    order = grouped_order(blocks, 8, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(int(blocks.sum())))
    # Windows close once they hold 8 samples: each run of the order is whole blocks.
    seen, run_blocks, runs_of_blocks = 0, set(), []
    for index in order.tolist():
        run_blocks.add(int(block_of[index]))
        seen += 1
        if seen == sum(int(blocks[b]) for b in run_blocks) and seen >= 8:
            runs_of_blocks.append(run_blocks)
            seen, run_blocks = 0, set()
    assert len(runs_of_blocks) >= 2 and all(len(r) <= 3 for r in runs_of_blocks)
    assert order.tolist() != list(range(len(order)))  # shuffled within the blocks too
    again = grouped_order(blocks, 8, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and starts[0] == 0


def test_a_worker_holds_at_most_two_windows_of_row_groups(jpeg_root, hub_files):
    train = os.path.join(jpeg_root, "train")
    files = [os.path.join(train, c, f) for c in sorted(os.listdir(train), key=os.fsencode)
             for f in sorted(os.listdir(os.path.join(train, c)))]  # fmt: skip
    samples, _ = hf.load_samples(f"{hub_files}/parquet", "train", hf.Columns(), 4)
    assert samples.blocks.tolist() == [4, 4, 4, 3]  # 15 rows: 8 and 7 in the two files
    sampler = EpochSampler(len(samples), 3, grouping={"blocks": samples.blocks, "window": 4})
    held = []
    for index, _ in sampler:
        image, label, name = samples.opened(index, f"{hub_files}/parquet")
        assert image.getvalue() == open(files[index], "rb").read() and "row group" in name
        held.append(sum(map(len, samples.cache.groups.values())))
    assert max(held) <= 8 and len(held) == 15


def sampled_positions(processes, data: str) -> list[list[int]]:
    """The train indices this rank's loader reads in epochs 1 and 2."""
    spec = datasets.DataSpec("imagenet", data, gen=f"{data}-gen-{processes.rank}", batch_size=4,
                             workers=0, seed=5, crops=datasets.folder_samples.crops_for(64))  # fmt: skip
    train, _ = datasets.create_loaders(spec, torch.device("cpu"), processes.rank, processes.world)
    epochs = []
    for epoch in (1, 2):
        datasets.set_epoch(train, epoch)
        epochs.append([index for index, _ in train.loader.sampler])
    return epochs


def test_two_processes_read_every_parquet_sample_once_an_epoch(hub_files, tmp_path):
    ranks = run_ranks(sampled_positions, 2, tmp_path, f"{hub_files}/parquet")
    for epoch in (0, 1):
        both = ranks[0][epoch] + ranks[1][epoch]
        assert sorted(both) == list(range(15)) and ranks[0][epoch] != ranks[1][epoch]
    assert ranks[0][0] != ranks[0][1]  # reshuffled each epoch


@pytest.fixture(scope="module")
def fashion_parquet(foolbox_data, tmp_path_factory) -> str:
    """foolbox's 20 real Fashion-MNIST images as JPEG bytes in plain parquet files (columns
    img and y, no class names): how other tools than datasets write such data."""
    folder = tmp_path_factory.mktemp("fashion-parquet")
    samples = labelled_images(foolbox_data, "fashionMNIST")
    for split, part in (("train", samples[:16]), ("validation", samples[16:])):
        jpegs = []
        for path, _ in part:
            buffer = io.BytesIO()
            Image.open(path).convert("L").save(buffer, "JPEG", quality=95)
            jpegs.append(buffer.getvalue())
        table = pa.table({"img": jpegs, "y": [label for _, label in part]})
        pq.write_table(table, folder / f"{split}.parquet", row_group_size=5)
    return str(folder)


def test_plain_parquet_trains_with_named_columns_and_numbered_classes(
    foolbox_data, fashion_parquet, tmp_path
):
    done = run(fashion_parquet, tmp_path / "run", "-nEpochs", "1", "-nThreads", "2",
               "-imageColumn", "img", "-labelColumn", "y", "-cropSize", "32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = torch.load(tmp_path / "run" / "model_1.pth", weights_only=True)["model"]
    labels = [label for _, label in labelled_images(foolbox_data, "fashionMNIST")[:16]]
    assert weights["fc.weight"].shape[0] == max(labels) + 1  # classes '0' ... up to the highest


def damaged_copy(hub_files, tmp_path, damage) -> str:
    """A copy of the parquet files with damage(folder) done to it."""
    folder = tmp_path / "damaged"
    shutil.copytree(f"{hub_files}/parquet", folder)
    damage(folder)
    return str(folder)


def rewrite(folder, name: str, change) -> None:
    """data/<name>.parquet with its table changed by change(table) (schema metadata kept
    unless change sets its own), in row groups of 4."""
    path = folder / "data" / f"{name}.parquet"
    table = pq.read_table(path)
    changed = change(table)
    if changed.schema.metadata is None:
        changed = changed.replace_schema_metadata(table.schema.metadata)
    pq.write_table(changed, path, row_group_size=4)


def labels_set(*values):
    return lambda table: table.set_column(1, "label", pa.array([*values, *table["label"].to_pylist()[len(values):]], pa.int64()))  # fmt: skip


def null_image(table):
    images = table["image"].combine_chunks()
    nulled = pa.StructArray.from_arrays(
        [pa.array([None, *images.field("bytes").to_pylist()[1:]], pa.binary()), images.field("path")],
        names=["bytes", "path"],
    )  # fmt: skip
    return table.set_column(0, "image", nulled)


TRAIN0 = r"\S+/data/train-00000-of-00002\.parquet"
DAMAGES = {
    "label out of range": (lambda f: rewrite(f, "train-00000-of-00002", labels_set(7)),
                           rf"{TRAIN0}: row 0 has label 7, not a class index below 3"),
    "unlabelled split": (lambda f: rewrite(f, "train-00000-of-00002", labels_set(0, -1)),
                         rf"{TRAIN0}: row 1 has label -1, not a class index below 3 \(an unlabelled"),
    "no label": (lambda f: rewrite(f, "train-00000-of-00002", labels_set(None)),
                 rf"{TRAIN0}: row 0 has no label"),
    "no validation files": (lambda f: [p.unlink() for p in (f / "data").glob("validation-*")],
                            r"no parquet files of the val split in \S+: expected names holding"
                            r" validation or val or valid"),
    "truncated file": (lambda f: (f / "data" / "train-00001-of-00002.parquet").write_bytes(
                           (f / "data" / "train-00001-of-00002.parquet").read_bytes()[:500]),
                       r"cannot read \S+/data/train-00001-of-00002\.parquet: "),
    "other class names": (lambda f: rewrite(f, "validation-00000-of-00002", lambda t: t.replace_schema_metadata(
                              {b"huggingface": b'{"info": {"features": {"label": {"names": ["a", "b", "c"]}}}}'})),
                          r"\S+/data/validation-00000-of-00002\.parquet names other classes than the train"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_bad_parquet_is_one_line_naming_it_and_nothing_is_written(kind, hub_files, tmp_path):
    damage, says = DAMAGES[kind]
    done = run(damaged_copy(hub_files, tmp_path, damage), tmp_path / "run", "-nEpochs", "1",
               "-nThreads", "0")  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(rf"error: {says}", done.stderr), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["-imageColumn", "pixels"], "has no column 'pixels' (its columns: image, label); name"
                                     " the column with -imageColumn"),
        (["-labelColumn", "class"], "has no column 'class' (its columns: image, label); name"
                                    " the column with -labelColumn"),
        (["-imageColumn", "label"], "column 'label' holds int64, not image bytes"),
    ],
)  # fmt: skip
def test_a_column_that_is_not_there_names_its_flag(flags, says, hub_files, tmp_path):
    done = run(f"{hub_files}/parquet", tmp_path / "run", "-nEpochs", "1", *flags)
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_image_left_out_of_the_file_is_named_as_unreadable_or_skipped(hub_files, tmp_path):
    """As an unreadable image file is: found when read, named, or skipped with -skipCorrupt."""
    data = damaged_copy(hub_files, tmp_path, lambda f: rewrite(f, "train-00000-of-00002",
                                                               null_image))  # fmt: skip
    stopped = run(data, tmp_path / "stopped", "-nEpochs", "1", "-nThreads", "0")
    assert stopped.returncode == 2 and stopped.stderr.count("\n") == 1, stopped.stderr
    assert re.match(rf"error: cannot read image {TRAIN0} \(row group 0, row 0\)", stopped.stderr)
    done = run(data, tmp_path / "run", "-nEpochs", "1", "-nThreads", "0", "-skipCorrupt", "true")
    assert done.returncode == 0, done.stderr
    assert re.search(r"skipped 1 unreadable image", done.stdout), done.stdout


def test_without_pyarrow_the_error_says_what_to_install(hub_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    done = run(f"{hub_files}/parquet", tmp_path / "run", "-nEpochs", "1")
    assert done.returncode == 2
    assert done.stderr == (
        "error: reading Hugging Face parquet / Arrow files needs pyarrow: pip install pyarrow\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_parquet_folder_is_told_from_class_folders_cheaply(jpeg_root, hub_files, tmp_path):
    assert hf.is_hf(f"{hub_files}/parquet") and hf.is_hf(f"{hub_files}/saved")
    assert not hf.is_hf(jpeg_root)
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    shutil.copy(f"{hub_files}/parquet/data/train-00000-of-00002.parquet", tmp_path / "train")
    assert hf.is_hf(str(tmp_path))  # train/*.parquet and val/*.parquet: a split per folder
    assert [hf.split_of(p) for p in ("data/train-00000-of-00257.parquet",
                                     "default/validation/0000.parquet", "x/test-0.parquet")] == [
        "train", "val", None]  # fmt: skip


@pytest.mark.parametrize("layout", ["folders", "shards"])
def test_column_flags_on_data_without_columns_are_refused(layout, jpeg_root, shards_root, tmp_path):
    data = jpeg_root if layout == "folders" else shards_root
    done = run(data, tmp_path / "run", "-nEpochs", "1", "-imageColumn", "img")
    held = "class folders" if layout == "folders" else "tar shards"
    assert done.returncode == 2 and done.stderr == (
        f"error: -imageColumn is for Hugging Face parquet / Arrow data; {data} holds {held},"
        " which have no columns: drop -imageColumn\n"
    )
    assert not (tmp_path / "run").exists()


def damaged_page(folder) -> None:
    """The page header of row group 1's image column in the first train file overwritten."""
    path = folder / "data" / "train-00000-of-00002.parquet"
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("threads", ["0", "2"])
def test_a_damaged_parquet_page_names_its_file_and_row_group(threads, hub_files, tmp_path):
    data = damaged_copy(hub_files, tmp_path, damaged_page)
    stopped = run(data, tmp_path / "stopped", "-nEpochs", "1", "-nThreads", threads)
    assert stopped.returncode == 2 and stopped.stderr.count("\n") == 1, stopped.stderr
    assert re.fullmatch(rf"error: cannot read {TRAIN0} \(row group 1\): .+; the file is damaged:"
                        r" fetch it again\n", stopped.stderr), stopped.stderr  # fmt: skip
    done = run(
        data, tmp_path / "run", "-nEpochs", "1", "-nThreads", threads, "-skipCorrupt", "true"
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"skipped 4 unreadable images", done.stdout), done.stdout


def test_an_error_quoting_data_quotes_at_most_a_little(hub_files, tmp_path):
    """-labelColumn image: each label would be a JPEG's bytes."""
    done = run(f"{hub_files}/parquet", tmp_path / "run", "-nEpochs", "1", "-labelColumn", "image")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "row 0 has label {'bytes': b'\\xff\\xd8" in done.stderr and len(done.stderr) < 400


@pytest.mark.parametrize("name", ["../../train/data-00000-of-00001.arrow", "/etc/hostname",
                                  "sub/data.arrow", "data.arrow; rm -rf x", 7])  # fmt: skip
def test_a_save_to_disk_listing_names_only_files_beside_it(name, hub_files, tmp_path):
    folder = tmp_path / "saved"
    shutil.copytree(f"{hub_files}/saved", folder)
    state = json.loads((folder / "train" / "state.json").read_text())
    state["_data_files"][0]["filename"] = name
    (folder / "train" / "state.json").write_text(json.dumps(state))
    done = run(folder, tmp_path / "run", "-nEpochs", "1")
    assert done.returncode == 2 and done.stderr == (
        f"error: {folder}/train/state.json lists a data file {name!r}: not a plain .arrow file"
        " name beside it (no folder); refused\n"
    )
    assert not (tmp_path / "run").exists()


def test_parquet_metadata_naming_a_million_and_one_classes_is_refused(hub_files, tmp_path):
    names = json.dumps({"info": {"features": {"label": {"names": list(range(10**6 + 1))}}}})
    data = damaged_copy(hub_files, tmp_path, lambda f: [rewrite(f, name, lambda t: t.replace_schema_metadata({b"huggingface": names.encode()})) for name in ("train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00002", "validation-00001-of-00002")])  # fmt: skip
    done = run(data, tmp_path / "run", "-nEpochs", "1")
    assert done.returncode == 2 and done.stderr == (
        f"error: {data} names 1,000,001 classes, more than 1,000,000: not a data set this tool"
        " trains\n"
    )
    assert not (tmp_path / "run").exists()
