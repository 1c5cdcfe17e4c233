"""A shard listing (shards.json) may come from someone else: its names never reach a shell as
code and never choose a path outside its folder or the spool; each shard is listed once, and
checked against its SHA-256 where the listing gives one, local or fetched."""

import json
import os
import re
import shutil

import pytest
import runs
import torch
from conftest import load_script

from datasets import shards

FLAGS = ("-dataset imagenet -netType resnet -depth 18 -batchSize 4 -LR 0.01 -cropSize 64"
         " -manualSeed 5 -tensorboard false -nEpochs 1 -nThreads 0").split()  # fmt: skip

# Each name would, before the listing was checked, run `touch PWNED` through a pipe:
# -shardSource or write the fetched shard to PWNED (the spool is TMP/gen/spool-*/).
HOSTILE = {
    "command after a semicolon": "train-000000.tar; touch {pwned} #",
    "command substitution": "$(touch {pwned})a.tar",
    "backquotes": "`touch {pwned}`.tar",
    "a second line": "a.tar\ntouch {pwned}",
    "a pipe": "a.tar | tee {pwned}",
    "an option": "--output={pwned}.tar",
    "up and out": "../../pwned",
    "up and out as a tar": "../../pwned.tar",
    "an absolute path": "{pwned}.tar",
    "a folder that climbs": "sub/../../../pwned.tar",
    "a NUL": "a.tar\x00../../pwned",
    "not a tar": "train-000000",
    "not text": 7,
}


def hostile_listing(shards_root, tmp_path, name) -> str:
    """A folder with the shards and a shards.json whose second training shard is named name."""
    folder = tmp_path / "hostile"
    shutil.copytree(shards_root, folder)
    listing = json.loads((folder / "shards.json").read_text())
    listing["splits"]["train"]["shards"][1]["name"] = name
    (folder / "shards.json").write_text(json.dumps(listing))
    return str(folder)


def run(data, tmp_path, *flags):
    save = tmp_path / "run"
    return runs.main_run([*FLAGS, "-data", data, "-save", save, "-gen", tmp_path / "gen", *flags])


@pytest.mark.parametrize("fetched", [False, True], ids=["local", "fetched"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_shard_name_is_refused_before_anything_runs(kind, fetched, shards_root, tmp_path):
    pwned = tmp_path / "pwned"
    name = HOSTILE[kind].format(pwned=pwned) if isinstance(HOSTILE[kind], str) else HOSTILE[kind]
    data = hostile_listing(shards_root, tmp_path, name)
    source = ["-shardSource", f"pipe:cat {shards_root}/{{shard}}"] if fetched else []
    done = run(data, tmp_path, *source)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {data}/shards.json: train shard 1 is named "), (
        done.stderr
    )
    assert "not a plain file name ending in .tar" in done.stderr
    assert not pwned.exists() and not os.path.exists(f"{pwned}.tar")
    assert not (tmp_path / "run").exists() and not (tmp_path / "gen").exists()
    assert sorted(os.listdir(tmp_path)) == ["hostile"]  # nothing written beside it either


def test_a_shard_listed_twice_is_refused_by_name(shards_root, tmp_path):
    data = hostile_listing(shards_root, tmp_path, "train-000000.tar")
    done = run(data, tmp_path)
    assert done.returncode == 2 and done.stderr == (
        f"error: {data}/shards.json: train shard 1: train-000000.tar is listed twice; list each"
        " shard once\n"
    )
    listing = json.loads((tmp_path / "hostile" / "shards.json").read_text())
    listing["splits"]["train"]["shards"][1]["name"] = "train-000001.tar"
    listing["splits"]["val"]["shards"][0]["name"] = "train-000002.tar"  # across the splits too
    (tmp_path / "hostile" / "shards.json").write_text(json.dumps(listing))
    with pytest.raises(shards.DataError, match="val shard 0: train-000002.tar is listed twice"):
        shards.check_listing(listing, "shards.json")


BAD_FIELDS = {
    "a count that is missing": (lambda s: s.pop("count"), "has count None, not a number"),
    "a negative count": (lambda s: s.update(count=-4), "has count -4, not a number"),
    "a count that is text": (lambda s: s.update(count="4"), "has count '4', not a number"),
    "a count that is true": (lambda s: s.update(count=True), "has count True, not a number"),
    "a count of a trillion": (lambda s: s.update(count=10**12), "has count 1000000000000, not"),
    "a short checksum": (lambda s: s.update(sha256="abc"), "has sha256 'abc', not 64 hex"),
    "a shard that is a list": (lambda s: s.clear(), "is named None, not a plain file name"),
}  # fmt: skip


@pytest.mark.parametrize("fetched", [False, True], ids=["local", "fetched"])
@pytest.mark.parametrize("kind", list(BAD_FIELDS))
def test_a_malformed_shard_entry_is_one_line_naming_it(kind, fetched, shards_root, tmp_path):
    change, says = BAD_FIELDS[kind]
    folder = tmp_path / "listing"
    shutil.copytree(shards_root, folder)
    listing = json.loads((folder / "shards.json").read_text())
    change(listing["splits"]["train"]["shards"][2])
    (folder / "shards.json").write_text(json.dumps(listing))
    source = ["-shardSource", f"pipe:cat {shards_root}/{{shard}}"] if fetched else []
    done = run(str(folder), tmp_path, *source)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "shards.json: train shard 2 " in done.stderr and says in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_name_is_quoted_for_the_shell_and_kept_inside_the_spool(tmp_path):
    assert shards.source_for("pipe:cat /s/{shard}", "a b.tar") == "pipe:cat /s/'a b.tar'"
    assert shards.source_for("/s/{shard}", "train-000001.tar") == "/s/train-000001.tar"
    spool = shards.Spool("pipe:touch {shard}", str(tmp_path / "spool"), keep=2)
    with pytest.raises(shards.DataError, match=r"would be written outside \S+/spool: refused"):
        spool.fetched("../../escaped.tar", None)
    assert sorted(os.listdir(tmp_path)) == []
    os.makedirs(tmp_path / "spool")
    os.symlink(tmp_path / "elsewhere.tar", tmp_path / "spool" / "linked.tar")
    with pytest.raises(shards.DataError, match="outside"):  # a link planted in the spool
        spool.fetched("linked.tar", None)
    os.symlink(tmp_path / "elsewhere.lock", tmp_path / "spool" / "other.tar.lock")
    with pytest.raises(shards.DataError, match=r"spool \S+ cannot be used \(\S+other\.tar\.lock"):
        spool.fetched("other.tar", None)  # its lock never written through a link
    assert not (tmp_path / "elsewhere.tar").exists()
    assert not (tmp_path / "elsewhere.lock").exists()


def changed_image_byte(folder) -> None:
    """One byte inside an image of train-000001.tar changed: the tar still reads."""
    path = folder / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[512 + 200] ^= 0xFF  # inside the first member's data, past its header
    path.write_bytes(bytes(data))


def test_a_local_shard_is_checked_against_its_checksum_once(shards_root, tmp_path, monkeypatch):
    hashed = []
    real = shards.sha256_of
    monkeypatch.setattr(shards, "sha256_of", lambda path: hashed.append(path) or real(path))
    first = run(shards_root, tmp_path, "-testOnly", "true")
    assert first.returncode == 0, first.stderr
    splits = json.loads(open(os.path.join(shards_root, "shards.json")).read())["splits"]
    names = sorted(s["name"] for part in splits.values() for s in part["shards"])
    assert sorted(map(os.path.basename, hashed)) == names  # each once
    again = run(shards_root, tmp_path, "-testOnly", "true")  # the index is cached: no rehash
    assert again.returncode == 0 and len(hashed) == len(names)
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]

    copy = tmp_path / "changed"
    shutil.copytree(shards_root, copy)
    changed_image_byte(copy)
    done = run(str(copy), tmp_path / "b")
    assert done.returncode == 2 and done.stderr == (
        f"error: shard {copy}/train-000001.tar is not the one shards.json lists (its SHA-256"
        " differs): a changed or damaged copy; write the shards again\n"
    )


@pytest.mark.parametrize("damage", [b"", b"garbage", None])
def test_a_damaged_index_cache_is_rebuilt(damage, shards_root, tmp_path):
    first = run(shards_root, tmp_path, "-testOnly", "true")
    assert first.returncode == 0, first.stderr
    (cache,) = (tmp_path / "gen").glob("shards-val-*.pt")
    if damage is None:  # a tensor of another shape: an index of other shards
        torch.save(torch.zeros(2, 4, dtype=torch.int64), cache)
    else:
        cache.write_bytes(damage)
    again = run(shards_root, tmp_path, "-testOnly", "true")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    assert torch.load(cache, weights_only=True).shape == (len(shards.load_samples(
        shards_root, "val", str(tmp_path / "gen"))[0]), 4)  # fmt: skip


def test_list_shards_refuses_a_name_that_training_would_refuse(shards_root, tmp_path, capsys):
    list_shards = load_script("list_shards")
    pwned = tmp_path / "pwned"
    argv = [str(tmp_path / "listing"), "--train", f"pipe:cat {shards_root}/train-000000.tar;"
            f" touch {pwned}", "--val", f"{shards_root}/val-000000.tar"]  # fmt: skip
    assert list_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: the shard 'pipe:cat \S+ touch \S+pwned' ends in '\S*pwned', not"
                        r" a plain file name ending in \.tar .*\n", err), err  # fmt: skip
    assert not pwned.exists() and not (tmp_path / "listing").exists()


def test_a_listing_of_a_million_and_one_classes_is_refused(shards_root, tmp_path):
    folder = tmp_path / "listing"
    shutil.copytree(shards_root, folder)
    listing = json.loads((folder / "shards.json").read_text())
    listing["classes"] = [str(n) for n in range(10**6 + 1)]
    (folder / "shards.json").write_text(json.dumps(listing))
    done = run(str(folder), tmp_path)
    assert done.returncode == 2 and "is not make_shards.py's listing (a list of 1 to 1,000,000" \
        " class names" in done.stderr  # fmt: skip
