"""-logger wandb,mlflow: what the trackers hold after a run and its resume, read back from the
files they write (wandb offline, MLflow's local store), and the one-line refusals."""

import glob
import json
import os
import signal
import socket
import sys

import pytest
import runs
import torch
from runs import main_run
from test_cli import small_cifar_args
from test_crash import final_weights
from test_day_one import one_error_line
from wandb_records import records

from checkpoints import KILL_BEFORE_RENAME


def offline_env(tmp_path) -> dict:
    """wandb writing files only, MLflow a local SQLite store: no network."""
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}  # fmt: skip


@pytest.fixture(scope="module")
def tracked_run(cifar10_root, tmp_path_factory):
    """A 2-epoch run logged to both trackers, then resumed to a third epoch."""
    tmp_path = tmp_path_factory.mktemp("tracked")
    save, env = tmp_path / "run", offline_env(tmp_path)

    def argv(epochs, flags=""):
        extra = f"-nEpochs {epochs} -batchSize 8 -logger wandb,mlflow {flags}"
        return small_cifar_args(cifar10_root, save, extra)

    first = main_run(argv(2), env=env)
    assert first.returncode == 0, first.stderr
    ids = json.load(open(save / "trackers.json"))
    resumed = main_run(argv(3, f"-resume {save}"), env=env)
    assert resumed.returncode == 0, resumed.stderr
    return save, env, ids, first, resumed


def metrics(save) -> list[dict]:
    """metrics.jsonl's records."""
    return [json.loads(line) for line in open(save / "metrics.jsonl")]


def val_errors(save) -> list[float]:
    """The test top-1 error after each epoch, as metrics.jsonl holds it."""
    return [r["top1"] for r in metrics(save) if r["split"] == "val" and r["iter"] is None]


def wandb_history(save, run_id) -> dict:
    """Every logged figure of the wandb run's files by name: [(step, value)]."""
    found = {}
    for path in sorted(glob.glob(str(save / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))):
        for record in records(path):
            if record.WhichOneof("record_type") == "history":
                step = record.history.step.num
                for item in record.history.item:
                    name = item.key or "/".join(item.nested_key)  # 'a/b' may come nested
                    found.setdefault(name, []).append((step, json.loads(item.value_json)))
    return found


def test_each_tracker_run_is_started_and_continued_on_resume(tracked_run):
    save, _, ids, first, resumed = tracked_run
    assert set(ids) == {"wandb", "mlflow"} and json.load(open(save / "trackers.json")) == ids
    assert f"=> Logging to wandb run {ids['wandb']} (offline: {save}/wandb)" in first.stdout
    assert f"=> Logging to MLflow run {ids['mlflow']} (resnet-pytorch, sqlite:" in first.stdout
    for run_id in ids.values():
        assert run_id in resumed.stdout  # the same runs, continued
    files = glob.glob(str(save / "wandb" / "offline-run-*" / f"run-{ids['wandb']}.wandb"))
    assert len(files) == 2  # one file per part of the run, one run id


def test_wandb_holds_the_options_the_lines_and_each_epoch(tracked_run):
    save, _, ids, _, _ = tracked_run
    options = json.load(open(save / "opts.json"))
    started = [r for path in glob.glob(str(save / "wandb" / "*" / "*.wandb"))
               for r in records(path) if r.WhichOneof("record_type") == "run"]  # fmt: skip
    config = {item.key: json.loads(item.value_json) for item in started[0].run.config.update}
    assert config["LR"] == options["LR"] and config["arch"]["depth"] == 8
    history = wandb_history(save, ids["wandb"])
    assert [value for _, value in history["epoch/val_top1"]] == pytest.approx(val_errors(save))
    per_epoch = max(r["iter"] or 0 for r in metrics(save) if r["split"] == "train")
    assert [step for step, _ in history["epoch/val_top1"]] == [per_epoch * e for e in (1, 2, 3)]
    trained = [(r["epoch"], r["iter"], r["loss"]) for r in metrics(save)
               if r["split"] == "train" and r["iter"] is not None]  # fmt: skip
    logged = [value for _, value in history["train/loss"]]
    assert logged == pytest.approx([loss for *_, loss in trained])
    assert history["train/lr"][0][1] == pytest.approx(0.1)


def test_mlflow_holds_the_options_the_epochs_and_the_final_scores(tracked_run):
    from mlflow import MlflowClient

    save, env, ids, _, _ = tracked_run
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["depth"] == "8" and run.data.params["arch.nClasses"] == "None"
    history = client.get_metric_history(ids["mlflow"], "epoch/val_top1")
    assert [m.value for m in history] == pytest.approx(val_errors(save))
    latest = torch.load(save / "latest.pth", weights_only=True)
    assert run.data.metrics["final/bestTop1"] == pytest.approx(latest["bestTop1"])
    assert run.data.metrics["final/bestEpoch"] == latest["bestEpoch"]
    assert run.data.metrics["final/lastTop1"] == pytest.approx(val_errors(save)[-1])


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_mlflow_server_is_one_line_before_anything_is_written(
    cifar10_root, tmp_path
):
    uri = f"http://127.0.0.1:{closed_port()}"
    argv = small_cifar_args(cifar10_root, tmp_path / "run", "-logger mlflow")
    done = main_run(argv, env={"MLFLOW_TRACKING_URI": uri})
    one_error_line(done, f"-logger mlflow: the tracking server {uri} does not answer")
    assert not os.path.exists(tmp_path / "run")


def test_a_missing_tracker_package_is_one_line_naming_it(cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    argv = small_cifar_args(cifar10_root, tmp_path / "run", "-logger mlflow,wandb")
    one_error_line(main_run(argv), "-logger wandb needs its package: pip install wandb")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("logger", ["tensorboard", "wandb,wandb", "wandb,"])
def test_an_unknown_or_repeated_tracker_is_refused(cifar10_root, tmp_path, logger):
    argv = small_cifar_args(cifar10_root, tmp_path / "run", f"-logger {logger}")
    one_error_line(main_run(argv), f"-logger {logger}: give none or one or more of wandb, mlflow")


@pytest.mark.parametrize(
    "ids", ['{"wandb": "../../x"}', '{"mlflow": "a; rm -rf /"}', '["wandb"]', "{"]
)
def test_a_trackers_file_that_names_no_run_of_ours_is_refused(tracked_run, tmp_path, ids):
    save, env, *_ = tracked_run
    copy = tmp_path / "copy"
    os.makedirs(copy)
    for name in ("latest.pth", "model_3.pth", "optimState_3.pth", "opts.json"):
        open(copy / name, "wb").write(open(save / name, "rb").read())
    (copy / "trackers.json").write_text(ids)
    argv = small_cifar_args(str(json.load(open(save / "opts.json"))["data"]), copy,
                            f"-nEpochs 4 -batchSize 8 -logger wandb -resume {copy}")  # fmt: skip
    done = main_run(argv, env=env)
    one_error_line(done, f"{copy}/trackers.json")
    assert sorted(os.listdir(copy)) == sorted(
        ["latest.pth", "model_3.pth", "optimState_3.pth", "opts.json", "trackers.json"]
    )


def test_a_wandb_server_that_does_not_answer_is_one_line_and_leaves_no_run(cifar10_root, tmp_path):
    save = tmp_path / "run"
    argv = small_cifar_args(cifar10_root, save, "-logger wandb")
    unreachable = {"WANDB_MODE": "online", "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
                   "WANDB_API_KEY": "0" * 40, "WANDB_INIT_TIMEOUT": "5"}  # fmt: skip
    done = main_run(argv, env=unreachable)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("error: -logger wandb could not start a run: ") and (
        "WANDB_MODE=offline" in said
    )
    assert not [name for name in os.listdir(save) if name != "wandb"]  # wandb's own log only
    again = main_run(argv, env=offline_env(tmp_path))  # the same command, offline: it trains
    assert again.returncode == 0, again.stderr


def test_a_killed_tracked_run_resumes_bitwise_into_the_same_tracker_runs(cifar10_root, tmp_path):
    from mlflow import MlflowClient

    env = offline_env(tmp_path)
    flags = "-nEpochs 2 -batchSize 8 -checkpointEvery 2 -manualSeed 3"
    plain = main_run(small_cifar_args(cifar10_root, tmp_path / "plain", flags))
    assert plain.returncode == 0, plain.stderr
    save = tmp_path / "tracked"
    argv = small_cifar_args(cifar10_root, save, f"{flags} -logger wandb,mlflow -resume {save}")
    killed = runs.main_process(
        argv, env={**os.environ, **env, KILL_BEFORE_RENAME: "model_2_iter2.pth"}
    )
    assert killed.returncode == -signal.SIGKILL  # inside epoch 2, its tracker runs left open
    ids = json.load(open(save / "trackers.json"))
    done = main_run(argv, env=env)
    assert done.returncode == 0, done.stderr
    assert json.load(open(save / "trackers.json")) == ids and ids["mlflow"] in done.stdout
    for name, weights in final_weights(tmp_path / "plain", 2).items():
        assert torch.equal(weights, final_weights(save, 2)[name]), name  # trackers change nothing
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
    assert len(client.get_metric_history(ids["mlflow"], "epoch/val_top1")) == 2
    # wandb's service writes its file in its own time: what it held at the SIGKILL is lost
    steps = [step for step, _ in wandb_history(save, ids["wandb"])["epoch/val_top1"]]
    assert steps[-1] == 6 and set(steps) <= {3, 6}
