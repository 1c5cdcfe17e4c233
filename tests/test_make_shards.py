"""scripts/make_shards.py: an ImageNet-style folder as WebDataset tar shards (KEY.<ext> with
the image's own bytes, KEY.cls with its class index), resumable, never writing into a
folder that holds something else."""

import hashlib
import json
import os
import tarfile

import pytest
from conftest import load_script

make_shards = load_script("make_shards")


def shard_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def samples_of(dst, split) -> list[tuple[str, bytes, int]]:
    """(key, image bytes, label) of every sample of the split's shards, in shard order."""
    found = []
    for name in sorted(n for n in os.listdir(dst) if n.startswith(f"{split}-")):
        members = shard_members(os.path.join(dst, name))
        for (image_name, image), (label_name, label) in zip(members[::2], members[1::2], strict=True):  # fmt: skip
            key = image_name.split(".")[0]
            assert label_name == f"{key}.cls"
            found.append((key, image, int(label)))
    return found


def source_samples(src, split) -> dict[bytes, int]:
    """sha256 of each image's bytes -> the index of its class (train/'s sorted folders)."""
    classes = sorted(os.listdir(os.path.join(src, "train")))
    found = {}
    for label, name in enumerate(classes):
        folder = os.path.join(src, split, name)
        for file in os.listdir(folder):
            with open(os.path.join(folder, file), "rb") as handle:
                found[hashlib.sha256(handle.read()).digest()] = label
    return found


def test_every_image_goes_in_once_with_its_bytes_and_label(jpeg_root, tmp_path):
    dst = tmp_path / "shards"
    assert make_shards.main([jpeg_root, str(dst), "--shard-size", "4"]) == 0
    index = json.loads((dst / "shards.json").read_text())
    assert index["classes"] == ["Zebra", "apple", "banana"]
    for split in ("train", "val"):
        samples = samples_of(dst, split)
        expected = source_samples(jpeg_root, split)
        got = {hashlib.sha256(image).digest(): label for _, image, label in samples}
        assert got == expected and len(samples) == len(expected) == index["splits"][split]["count"]
        shards = index["splits"][split]["shards"]
        assert [s["count"] for s in shards][:-1] == [4] * (len(shards) - 1)
        for shard in shards:
            with open(dst / shard["name"], "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == shard["sha256"]
    assert sorted(os.listdir(dst)) == sorted(
        ["shards.json", *(s["name"] for p in index["splits"].values() for s in p["shards"])]
    )


def test_the_training_order_is_shuffled_once_by_the_seed(jpeg_root, tmp_path):
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert make_shards.main([jpeg_root, str(tmp_path / name), "--seed", seed]) == 0
        runs[name] = [image for _, image, _ in samples_of(tmp_path / name, "train")]
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]  # the same bytes for the same seed
    labels = [label for _, _, label in samples_of(tmp_path / "a", "train")]
    assert labels != sorted(labels)  # the classes are mixed within a shard
    val = [label for _, _, label in samples_of(tmp_path / "a", "val")]
    assert val == sorted(val)  # validation keeps the folder's order


def test_a_byte_limit_keeps_each_shard_within_it_unless_one_image_is_larger(jpeg_root, tmp_path):
    assert make_shards.main([jpeg_root, str(tmp_path / "s"), "--shard-size", "60KB"]) == 0
    for name in os.listdir(tmp_path / "s"):
        if name.endswith(".tar"):
            images = [data for member, data in shard_members(tmp_path / "s" / name)
                      if not member.endswith(".cls")]  # fmt: skip
            assert sum(map(len, images)) <= 60_000 or len(images) == 1


@pytest.mark.parametrize("text", ["0", "-3", "1TB", "big"])
def test_a_bad_shard_size_is_refused(text, jpeg_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        make_shards.main([jpeg_root, str(tmp_path / "s"), "--shard-size", text])
    assert stop.value.code == 2 and "--shard-size" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_folder_holding_other_files_is_refused_and_left_alone(jpeg_root, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    assert make_shards.main([jpeg_root, str(dst)]) == 2
    assert capsys.readouterr().err == (
        f"error: {dst} is not empty; give an empty or new folder for the shards\n"
    )
    assert os.listdir(dst) == ["notes.txt"]
    assert make_shards.main([str(tmp_path / "nowhere"), str(tmp_path / "s")]) == 2
    assert "has no train/ folder" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_an_interrupted_run_resumes_keeping_its_sound_shards(jpeg_root, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert make_shards.main([jpeg_root, str(whole), "--shard-size", "3"]) == 0
    written = []
    write = make_shards.write_shard

    def interrupted(path, *args):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the fourth shard
        written.append(os.path.basename(path))
        return write(path, *args)

    dst = tmp_path / "resumed"
    monkeypatch.setattr(make_shards, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_shards.main([jpeg_root, str(dst), "--shard-size", "3"])
    monkeypatch.setattr(make_shards, "write_shard", write)
    with open(dst / written[1], "r+b") as handle:  # a finished shard damaged since
        handle.write(b"damaged")
    kept = os.stat(dst / written[0]).st_mtime_ns
    assert make_shards.main([jpeg_root, str(dst), "--shard-size", "3"]) == 0  # resumes
    assert os.stat(dst / written[0]).st_mtime_ns == kept  # checked, not rewritten
    assert sorted(os.listdir(dst)) == sorted(os.listdir(whole))
    for name in os.listdir(whole):
        assert (dst / name).read_bytes() == (whole / name).read_bytes(), name
    other = make_shards.main([jpeg_root, str(tmp_path / "whole"), "--shard-size", "3"])
    assert other == 2  # a finished set is not an unfinished run: nothing is touched
