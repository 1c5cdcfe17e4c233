"""checkpoints.py against the Lua's checkpoints.lua semantics, with PyTorch files."""

import os
import pickle

import pytest
import torch
from torch import nn

import checkpoints
import models


def tiny_model():
    torch.manual_seed(0)
    return models.create("resnet", 8, "cifar10")


def save_epoch(folder, model, epoch, is_best, best=(50.0, 10.0)):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    arch = {"netType": "resnet", "depth": 8, "dataset": "cifar10"}
    record = checkpoints.model_record(model, epoch, arch, [str(i) for i in range(10)])
    checkpoints.save(str(folder), record, optimizer.state_dict(),
                     scores=checkpoints.Scores(best), is_best=is_best)  # fmt: skip
    return optimizer


def test_save_writes_the_four_files_loadable_with_weights_only(tmp_path):
    model = tiny_model()
    save_epoch(tmp_path, model, 3, is_best=True)
    assert sorted(os.listdir(tmp_path)) == [
        "latest.pth",
        "model_3.pth",
        "model_best.pth",
        "optimState_3.pth",
    ]
    for name in os.listdir(tmp_path):
        torch.load(tmp_path / name, weights_only=True)
    record = torch.load(tmp_path / "model_3.pth", weights_only=True)
    assert record["arch"]["depth"] == 8 and record["classes"][9] == "9" and record["epoch"] == 3
    fresh = models.create("resnet", 8, "cifar10")
    fresh.load_state_dict(record["model"], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_latest_points_to_the_newest_epoch_and_keeps_the_best(tmp_path):
    model = tiny_model()
    save_epoch(tmp_path, model, 1, is_best=True, best=(40.0, 9.0))
    optimizer = save_epoch(tmp_path, model, 2, is_best=False, best=(40.0, 9.0))
    found = checkpoints.latest(str(tmp_path))
    assert found.epoch == 2 and found.scores.best == (40.0, 9.0)
    assert found.model.path.endswith("model_2.pth")
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(found.optimizer)
    buffers = [s["momentum_buffer"] for s in restored.state_dict()["state"].values()]
    expected = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, expected, strict=True))


def test_a_folder_without_latest_gives_none(tmp_path):
    assert checkpoints.latest(str(tmp_path)) is None


def test_wrapped_models_are_saved_unwrapped(tmp_path):
    model = tiny_model()
    wrapped = nn.DataParallel(model)
    save_epoch(tmp_path, wrapped, 1, is_best=False)
    keys = torch.load(tmp_path / "model_1.pth", weights_only=True)["model"].keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
    assert checkpoints.unwrap(wrapped) is model


def test_clean_state_dict_strips_nested_prefixes():
    cleaned = checkpoints.clean_state_dict({"module._orig_mod.fc.weight": 1, "fc.bias": 2})
    assert cleaned == {"fc.weight": 1, "fc.bias": 2}


def test_truncated_file_is_named(tmp_path):
    model = tiny_model()
    save_epoch(tmp_path, model, 1, is_best=False)
    data = (tmp_path / "model_1.pth").read_bytes()
    (tmp_path / "model_1.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoints.CheckpointError, match="model_1.pth is truncated"):
        checkpoints.latest(str(tmp_path))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump(Exploit(), handle, protocol=2)
    with pytest.raises(checkpoints.CheckpointError, match="evil.pth"):
        checkpoints.load_file(str(path))


def test_a_bare_state_dict_is_accepted_as_a_model_file(tmp_path):
    model = tiny_model()
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "plain.pth")
    record = checkpoints.load_model_file(str(tmp_path / "plain.pth"))
    assert record.arch is None and "fc.weight" in record.weights


def test_failed_write_leaves_no_partial_file(tmp_path):
    class Unsaveable:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.atomic_save({"x": Unsaveable()}, str(tmp_path / "latest.pth"))
    assert os.listdir(tmp_path) == []


def test_a_full_disk_keeps_the_previous_checkpoint_set(tmp_path, monkeypatch):
    import errno

    model = tiny_model()
    save_epoch(tmp_path, model, 1, is_best=True)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real_save = torch.save

    def disk_full_on_optimizer_file(obj, stream, *args, **kwargs):
        if isinstance(obj, dict) and "param_groups" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_optimizer_file)
    with pytest.raises(OSError) as failure:
        save_epoch(tmp_path, model, 2, is_best=True)
    assert failure.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert checkpoints.latest(str(tmp_path)).epoch == 1
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content  # model_best.pth too
    assert not any(n.startswith(".partial-") for n in os.listdir(tmp_path))


def test_prune_keeps_current_best_and_the_newest_epochs(tmp_path):
    names = ["model_1.pth", "optimState_1.pth", "model_2.pth", "optimState_2.pth",
             "model_3_iter5.pth", "optimState_3_iter5.pth", "model_3_iter9.pth",
             "optimState_3_iter9.pth", "model_best.pth", "opts.json", ".partial-x"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    checkpoints.prune(str(tmp_path), {"model_3_iter9.pth", "optimState_3_iter9.pth"}, keep=1)
    assert sorted(os.listdir(tmp_path)) == ["model_2.pth", "model_3_iter9.pth", "model_best.pth",
                                            "optimState_2.pth", "optimState_3_iter9.pth", "opts.json"]  # fmt: skip
