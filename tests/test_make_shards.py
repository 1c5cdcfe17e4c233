"""scripts/make_shards.py: an ImageNet-style folder as WebDataset tar shards (KEY.<ext> with
the image's own bytes, KEY.cls with its class index), resumable, never writing into a
folder that holds something else."""

import hashlib
import io
import json
import os
import signal
import tarfile

import pytest
import runs
from conftest import fill, labelled_images, load_script
from PIL import Image
from test_commands import running, signalled_while_starting

from datasets import shards

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


@pytest.mark.parametrize("text", ["0", "-3", "1TB", "big", "0.5", "2.5", "0B", "0.0001KB", "0GB"])
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


def test_an_interrupted_run_resumes_keeping_its_sound_shards(
    jpeg_root, tmp_path, monkeypatch, capsys
):
    whole = tmp_path / "whole"
    assert make_shards.main([jpeg_root, str(whole), "--shard-size", "3"]) == 0
    written = []
    write = make_shards.write_shard

    def interrupted(path, *args):
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the fourth shard
        written.append(os.path.basename(path))
        return write(path, *args)

    dst = tmp_path / "resumed"
    monkeypatch.setattr(make_shards, "write_shard", interrupted)
    assert make_shards.main([jpeg_root, str(dst), "--shard-size", "3"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "=> Stopped by SIGINT while writing shards; the finished shards are kept: the same"
        " command continues"
    )
    assert not [name for name in os.listdir(dst) if name.endswith(".partial")]
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


list_shards = load_script("list_shards")


def test_shards_made_elsewhere_are_listed_as_make_shards_lists_them(shards_root, tmp_path, capsys):
    with open(os.path.join(shards_root, "shards.json")) as handle:
        made = json.load(handle)
    (tmp_path / "names.txt").write_text("\n".join(made["classes"]) + "\n")
    last = {split: len(made["splits"][split]["shards"]) - 1 for split in ("train", "val")}
    argv = [str(tmp_path / "listing")]
    for split in ("train", "val"):
        argv += [f"--{split}", f"pipe:cat {shards_root}/{split}-{{000000..{last[split]:06d}}}.tar"]
    assert list_shards.main([*argv, "--classes", str(tmp_path / "names.txt")]) == 0
    with open(tmp_path / "listing" / "shards.json") as handle:
        assert json.load(handle) == made
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"=> train with: -data {tmp_path / 'listing'} -shardSource 'pipe:cat {shards_root}/{{shard}}'"
    )
    assert list_shards.main(argv) == 2  # never over an existing listing
    assert "shards.json exists" in capsys.readouterr().err


def test_patterns_expand_as_webdataset_expands_them():
    assert list_shards.expand("a-{000008..000011}.tar") == [
        "a-000008.tar", "a-000009.tar", "a-000010.tar", "a-000011.tar"]  # fmt: skip
    assert list_shards.expand("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert (
        list_shards.shard_name("pipe:curl -sf https://h/p/train-000001.tar") == "train-000001.tar"
    )


def webdataset_shard(path, samples: list[tuple[bytes, int]], first: int) -> None:
    """A tar shard as other tools write them: KEY.jpg, KEY.cls and a KEY.json beside."""
    with tarfile.open(path, "w") as tar:
        for n, (jpeg, label) in enumerate(samples):
            key = f"sample{first + n:06d}"
            for extension, data in (("jpg", jpeg), ("cls", str(label).encode()),
                                    ("json", b'{"source": "fashion-mnist"}')):  # fmt: skip
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_fashion_mnist_shards_of_another_tool_train_where_they_are(foolbox_data, tmp_path):
    """foolbox's 20 real Fashion-MNIST images as JPEG shards with .json side files (as
    WebDataset writers add them): listed by pattern, then trained from their folder."""
    samples = []
    for path, label in labelled_images(foolbox_data, "fashionMNIST"):
        buffer = io.BytesIO()
        Image.open(path).convert("L").save(buffer, "JPEG", quality=95)
        samples.append((buffer.getvalue(), label))
    remote = tmp_path / "remote"
    remote.mkdir()
    for name, part, first in (("train-000000.tar", samples[:8], 0),
                              ("train-000001.tar", samples[8:16], 8),
                              ("val-000000.tar", samples[16:], 16)):  # fmt: skip
        webdataset_shard(remote / name, part, first)
    listing = str(tmp_path / "listing")
    assert list_shards.main([listing, "--train", f"{remote}/train-{{000000..000001}}.tar",
                             "--val", f"{remote}/val-000000.tar"]) == 0  # fmt: skip
    with open(os.path.join(listing, "shards.json")) as handle:
        listed = json.load(handle)
    highest = max(label for _, label in samples)
    assert listed["classes"] == [str(i) for i in range(highest + 1)]
    assert [listed["splits"][s]["count"] for s in ("train", "val")] == [16, 4]
    done = runs.main_run(["-dataset", "imagenet", "-netType", "resnet", "-depth", "18",
                          "-batchSize", "4", "-cropSize", "32", "-nEpochs", "1", "-data", listing,
                          "-shardSource", f"{remote}/{{shard}}", "-save", tmp_path / "run",
                          "-gen", tmp_path / "gen", "-tensorboard", "false"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert " * Finished epoch # 1" in done.stdout


def test_a_shard_that_cannot_be_listed_is_one_line_naming_it(shards_root, tmp_path, capsys):
    broken = tmp_path / "train-000000.tar"
    webdataset_shard(broken, [(b"\xff\xd8", 0)], 0)
    with tarfile.open(broken, "a") as tar:
        info = tarfile.TarInfo("orphan.jpg")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"\xff\xd8"))
    cases = [(str(broken), "shard train-000000.tar: sample orphan has no class index in orphan.cls"),
             ("pipe:exit 3 # train-000009.tar", "cannot read shard train-000009.tar: `exit 3 #"
                                                " train-000009.tar` exited with 3"),
             (f"{tmp_path}/none-{{1..2}}.tar", f"cannot read shard none-1.tar ({tmp_path}/none-1.tar):"
                                               " No such file or directory")]  # fmt: skip
    val = tmp_path / "val-000000.tar"
    val.write_bytes(broken.read_bytes())
    for n, (train, says) in enumerate(cases):
        argv = [str(tmp_path / f"listing{n}"), "--train", train, "--val", str(val)]
        assert list_shards.main(argv) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {says}"  # after the bar
        assert not (tmp_path / f"listing{n}").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_listing(
    jpeg_root, small_filesystem, monkeypatch, capsys
):
    dst = small_filesystem / "shards"
    index_of = make_shards.index_of
    monkeypatch.setattr(make_shards, "index_of", lambda *a: fill(small_filesystem) or index_of(*a))
    assert make_shards.main([jpeg_root, str(dst), "--shard-size", "8"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {dst}/shards.json: No space left on device; free some space there, then run"
        " the same command again: it keeps the finished shards"
    )
    assert "shards.json" not in os.listdir(dst) and not any("partial" in n for n in os.listdir(dst))
    os.remove(small_filesystem / "filler")
    monkeypatch.setattr(make_shards, "index_of", index_of)
    assert make_shards.main([jpeg_root, str(dst), "--shard-size", "8"]) == 0  # continues

    listing = small_filesystem / "listing"
    listing.mkdir()
    fill(small_filesystem)
    argv = [str(listing), "--train", f"{dst}/train-{{000000..000001}}.tar", "--val",
            f"{dst}/val-000000.tar"]  # fmt: skip
    assert list_shards.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot write {listing}/shards.json: No space left on device; nothing was written"
    )
    assert os.listdir(listing) == []


def test_a_shard_write_that_fails_names_the_shard(jpeg_root, small_filesystem, capsys):
    fill(small_filesystem)
    assert make_shards.main([jpeg_root, str(small_filesystem / "s"), "--shard-size", "4"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {small_filesystem}/s/") and "[Errno" not in err, err
    assert ": No space left on device; free some space there" in err


def test_members_of_the_same_name_in_two_folders_are_two_samples(jpeg_root, tmp_path, capsys):
    """a/0000.jpg and b/0000.jpg in one tar: WebDataset's keys keep the folder."""
    images = sorted(glob_jpegs(jpeg_root))[:4]
    shard = tmp_path / "remote" / "train-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for n, path in enumerate(images):
            for extension, data in (("jpg", open(path, "rb").read()), ("cls", str(n % 2).encode())):
                info = tarfile.TarInfo(f"{'ab'[n // 2]}/{n % 2:04d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "remote" / "val-000000.tar").write_bytes(shard.read_bytes())
    listing = tmp_path / "listing"
    argv = [
        str(listing),
        "--train",
        str(shard),
        "--val",
        str(tmp_path / "remote" / "val-000000.tar"),
    ]
    assert list_shards.main(argv) == 0, capsys.readouterr().err
    listed = json.loads((listing / "shards.json").read_text())
    assert listed["splits"]["train"]["count"] == 4 and listed["classes"] == ["0", "1"]
    places = shards.scan_shard(str(shard), 2)
    with open(shard, "rb") as handle:
        got = [(handle.seek(offset), handle.read(size))[1] for offset, size, _ in places]
    assert got == [open(path, "rb").read() for path in images]
    assert [label for *_, label in places] == [0, 1, 0, 1]


def glob_jpegs(root) -> list[str]:
    return [
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith("JPEG")
    ]


@pytest.mark.parametrize("kind", ["folder", "dangling link", "link"])
def test_a_label_that_is_not_a_file_is_one_line(kind, shards_root, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in os.listdir(shards_root):
        (folder / name).write_bytes(open(os.path.join(shards_root, name), "rb").read())
    path = folder / "train-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name == "train_00000001.cls":
                member = tarfile.TarInfo(member.name)
                member.type = {"folder": tarfile.DIRTYPE, "dangling link": tarfile.SYMTYPE,
                               "link": tarfile.LNKTYPE}[kind]  # fmt: skip
                member.linkname = "train_00000000.cls" if kind == "link" else "nowhere.cls"
                tar.addfile(member)
            else:
                tar.addfile(member, io.BytesIO(data))
    listing = json.loads((folder / "shards.json").read_text())
    listing["splits"]["train"]["shards"][0].pop("sha256")  # changed on purpose
    (folder / "shards.json").write_text(json.dumps(listing))
    says = "train_00000001.cls is a folder or a link, not a file holding a class index"
    done = runs.main_run(["-dataset", "imagenet", "-netType", "resnet", "-depth", "18", "-data", folder, "-save",
                          tmp_path / "run", "-gen", tmp_path / "gen", "-nThreads", "0"])  # fmt: skip
    assert done.returncode == 2 and done.stderr == f"error: shard {path}: {says}\n"
    argv = [str(tmp_path / "listing"), "--train", str(path), "--val", f"{folder}/val-000000.tar"]
    assert list_shards.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: shard train-000000.tar: {says}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "listing").exists()


def test_a_pattern_that_names_no_shard_is_refused(shards_root, tmp_path, capsys):
    argv = [str(tmp_path / "listing"), "--train", f"{shards_root}/train-{{000003..000000}}.tar",
            "--val", f"{shards_root}/val-000000.tar"]  # fmt: skip
    assert list_shards.main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --train '{shards_root}/train-{{000003..000000}}.tar' names no shard (a range that"
        " counts down, such as {000003..000000}?); nothing was written\n"
    )
    assert not (tmp_path / "listing").exists()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_listing_ends_its_pipe_command(number, shards_root, tmp_path, capsys):
    """The command stops this process (as Ctrl-C or a scheduler would) and then waits for
    ever: it must be ended with the script, and nothing written."""
    pid_file = tmp_path / "pid"
    hangs = (f"pipe:echo $$ > {pid_file}; kill -{number.name[3:]} $PPID; exec sleep 600"
             " # train-000000.tar")  # fmt: skip
    argv = [str(tmp_path / "listing"), "--train", hangs, "--val", f"{shards_root}/val-000000.tar"]
    assert list_shards.main(argv) == 128 + number
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"=> Stopped by {number.name} while listing shards; nothing was written"
        f" ({tmp_path}/listing/shards.json)"
    )
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the pipe command is still running"
    assert not (tmp_path / "listing").exists()


def test_a_listing_stopped_while_its_pipe_command_starts_ends_it(
    shards_root, tmp_path, monkeypatch, capsys
):
    """The stop arrives before the script holds the command's process: still ended."""
    started = signalled_while_starting(monkeypatch, signal.SIGTERM)
    hangs = "pipe:exec sleep 600 # train-000000.tar"
    argv = [str(tmp_path / "listing"), "--train", hangs, "--val", f"{shards_root}/val-000000.tar"]
    assert list_shards.main(argv) == 128 + signal.SIGTERM
    assert "=> Stopped by SIGTERM while listing shards" in capsys.readouterr().err
    assert len(started) == 1 and not running(started[0]), "the pipe command is still running"
    assert not (tmp_path / "listing").exists()
