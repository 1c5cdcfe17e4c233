"""Day-one trust: a user's files are never lost or silently wrong, a failed start writes
nothing, every bad input is one line. Runs main.py as a user does, on the real samples."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import runs
import torch
from conftest import TIMEOUT
from test_cli import run_main, small_cifar_args

import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(folder) -> dict:
    """Every file below folder with its bytes."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                found[os.path.relpath(path, folder)] = os.readlink(path)
                continue
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def run_script(script: str, *argv: str) -> subprocess.CompletedProcess:
    """python -c script ROOT argv as a process of its own, with its text output."""
    return runs.process_run([sys.executable, "-c", script, ROOT, *argv])


def one_error_line(done, *fragments) -> str:
    """The run failed with exit 2 and one 'error:' line holding every fragment."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(cifar10_root, tmp_path_factory):
    """A finished 2-epoch ResNet-8 run on the CIFAR-10 sample: (its folder, the arguments
    of a run like it into a given folder with given extra flags)."""
    save = tmp_path_factory.mktemp("finished") / "run"

    def argv(folder, flags=""):
        return small_cifar_args(cifar10_root, folder, f"-nEpochs 2 -batchSize 4 {flags}")

    done = run_main(*argv(save))
    assert done.returncode == 0, done.stderr
    assert f"=> Saving checkpoints and records in {save}\n" in done.stdout
    return save, argv


def test_a_fresh_run_never_writes_into_a_folder_holding_a_run(finished_run, tmp_path):
    save, argv = finished_run
    before = snapshot(save)
    for other in (argv(save), argv(save, "-netType preresnet")):  # the same network, another
        done = run_main(*other)
        one_error_line(done, f"-save {save} already holds a run", f"-resume {save}",
                       "-overwrite true")  # fmt: skip
    assert snapshot(save) == before


def test_overwrite_replaces_the_earlier_run_and_resume_continues_it(finished_run, tmp_path):
    save, argv = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    (copy / "model_9.pth").write_bytes(open(copy / "model_2.pth", "rb").read())  # a longer run's
    resumed = run_main(*argv(copy, f"-resume {copy}"))
    assert resumed.returncode == 0 and "nothing to train (raise -nEpochs" in resumed.stdout
    latest = torch.load(copy / "latest.pth", weights_only=True)  # the scores it says it read
    said = f"{latest['bestTop1']:.3f}; last epoch (2) {latest['lastTop1']:.3f}\n"
    assert f"=> best: epoch {latest['bestEpoch']} of 2, top1 " + said in resumed.stdout
    done = run_main(*argv(copy, "-overwrite true"))
    assert done.returncode == 0, done.stderr
    assert f"=> -overwrite true: deleted the earlier run in {copy}" in done.stdout
    assert "model_9.pth" not in os.listdir(copy) and len(os.listdir(copy / "tb")) == 1
    records = [json.loads(line) for line in open(copy / "metrics.jsonl")]
    summaries = [r["epoch"] for r in records if r["iter"] is None and r["split"] == "train"]
    assert summaries == [1, 2]  # only the new run's records
    contradiction = run_main(*argv(copy, f"-resume {copy} -overwrite true"))
    one_error_line(contradiction, "-overwrite true would delete the run that -resume continues")


@pytest.mark.parametrize("pointer", ["missing", "dangling link"])
def test_resume_without_latest_but_with_model_files_is_refused(finished_run, tmp_path, pointer):
    save, argv = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    os.remove(copy / "latest.pth")
    if pointer == "dangling link":
        os.symlink(copy / "gone.pth", copy / "latest.pth")
    before = snapshot(copy)
    done = run_main(*argv(copy, f"-resume {copy}"))
    broken = "a broken link" if pointer == "dangling link" else "missing"
    one_error_line(done, f"its latest.pth is {broken}", f"-retrain {copy}/model_2.pth")
    assert snapshot(copy) == before


def test_an_epoch_trained_but_not_tested_is_tested_on_resume_not_retrained(finished_run,
                                                                          tmp_path):  # fmt: skip
    """A stop during validation saves epoch e at its last iteration, all samples used."""
    save, argv = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    record = torch.load(copy / "latest.pth", weights_only=True)
    torch.save({**record, "iteration": 5, "samples": 20}, copy / "latest.pth")
    lines_before = len(open(copy / "metrics.jsonl").readlines())
    done = run_main(*argv(copy, f"-resume {copy}"))
    assert done.returncode == 0, done.stderr
    assert "Training epoch" not in done.stdout and " * Finished epoch # 2 " in done.stdout
    records = [json.loads(line) for line in open(copy / "metrics.jsonl")][lines_before:]
    segment, *records = records  # this part of the run: it starts after epoch 2's 5 steps
    assert (segment["split"], segment["epoch"], segment["iter"]) == ("segment", 2, 5)
    assert {r["split"] for r in records} == {"val"}  # no second, empty training summary


def test_a_latest_pth_without_an_epoch_is_one_line(finished_run, tmp_path):
    save, argv = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    record = torch.load(copy / "latest.pth", weights_only=True)
    del record["epoch"]
    torch.save(record, copy / "latest.pth")
    done = run_main(*argv(copy, f"-resume {copy}"))
    one_error_line(done, "latest.pth is not a latest.pth written by this tool", "epoch")


@pytest.mark.parametrize("name", ["../outside/model_2.pth", "/etc/hostname", "model_2.pt"])
def test_a_latest_pth_naming_a_file_elsewhere_is_refused(name, finished_run, tmp_path):
    """A run folder may come from someone else: its latest.pth names files beside it only."""
    save, argv = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    record = torch.load(copy / "latest.pth", weights_only=True)
    torch.save({**record, "modelFile": name}, copy / "latest.pth")
    before = snapshot(copy)
    done = run_main(*argv(copy, f"-resume {copy}"))
    one_error_line(done, f"latest.pth names {name!r} as its modelFile, not a model_N.pth")
    assert snapshot(copy) == before


def test_a_failed_start_writes_nothing(finished_run, cifar10_root, tmp_path):
    save, _ = finished_run
    other = tmp_path / "other"
    # An optimizer state of ResNet-8 does not fit ResNet-14: refused before any file is made.
    argv = small_cifar_args(cifar10_root, other, "-depth 14 -nEpochs 1")
    done = run_main(*argv, "-optimState", str(save / "optimState_1.pth"))
    one_error_line(done, "optimizer state does not fit this network")
    long_save = os.path.join(tmp_path, *(["d" * 200] * 25))  # 5,000 characters
    done = run_main(*small_cifar_args(cifar10_root, long_save, "-nEpochs 1"))
    one_error_line(done, "cannot save in -save", "the path is too long")
    assert os.listdir(tmp_path) == []


def test_a_corrupt_first_image_stops_the_start_without_a_file(jpeg_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(jpeg_root, data)
    for path in (data / "train").rglob("*.JPEG"):
        path.write_bytes(b"not a jpeg")
    flags = "-dataset imagenet -netType resnet -depth 18 -batchSize 4 -nEpochs 1 -nThreads 0"
    done = run_main(*flags.split(), "-data", str(data), "-save", str(tmp_path / "save"),
                    "-gen", str(tmp_path / "gen"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: cannot read image ")
    assert not (tmp_path / "save").exists()


def test_a_full_disk_mid_run_is_one_line_and_the_checkpoints_load(cifar10_root, small_filesystem):
    save = small_filesystem / "run"  # room for about three epochs of ResNet-8 checkpoints
    done = run_main(*small_cifar_args(cifar10_root, save, "-nEpochs 30 -batchSize 10"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: no space left on device writing {save}/"), lines[0]
    assert "the checkpoints before it are intact" in lines[0]
    found = checkpoints.latest(str(save))
    assert found.epoch >= 1 and not any(n.startswith(".partial-") for n in os.listdir(save))


def test_a_read_only_save_and_a_full_stdout_are_told_in_words(cifar10_root, small_filesystem):
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    try:
        done = run_main(*small_cifar_args(cifar10_root, small_filesystem / "run"))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_filesystem)], check=True)
    one_error_line(done, f"{small_filesystem} is on a read-only file system", "another -save")
    filler = small_filesystem / "filler"
    with open(filler, "wb") as handle:  # fill the device
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    with open(small_filesystem / "out.txt", "wb") as stdout:  # found full as the process exits
        command = [sys.executable, runs.MAIN,
                   *small_cifar_args(cifar10_root, small_filesystem.parent / "run")]  # fmt: skip
        done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr == "error: no space left on the device that the output (stdout) is written to\n"
    )


def test_a_mid_epoch_resume_keeps_the_epoch_summary_and_takes_another_batch_size(
    cifar10_root, tmp_path
):
    """Killed while writing the end of epoch 1: latest.pth points at iteration 4 of 5."""
    flags = "-nEpochs 1 -batchSize 4 -checkpointEvery 2"

    def summary(save):
        records = [json.loads(line) for line in open(save / "metrics.jsonl")]
        return [r for r in records if r["iter"] is None and r["split"] == "train"][-1]

    reference = run_main(*small_cifar_args(cifar10_root, tmp_path / "ref", flags))
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    env = {**os.environ, checkpoints.KILL_BEFORE_RENAME: "model_1.pth"}
    assert runs.main_process(small_cifar_args(cifar10_root, killed, flags), env=env).returncode < 0
    assert checkpoints.latest(str(killed)).samples == 16
    for batch, first_line in (("4", "[1][5/5]"), ("6", "[1][3/3]")):
        save = tmp_path / f"resumed{batch}"
        shutil.copytree(killed, save)
        argv = small_cifar_args(cifar10_root, save, f"{flags} -resume {save}")
        done = run_main(*[batch if a == "4" else a for a in argv])
        assert done.returncode == 0, done.stderr
        assert f" | Epoch: {first_line}" in done.stdout  # the 4 images left, as one batch
        assert ("at image 16" in done.stdout) == (batch == "6")
        got, expected = summary(save), summary(tmp_path / "ref")
        for key in ("loss", "top1", "top5"):
            assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def second_request(first: str, second: str) -> subprocess.CompletedProcess:
    """A process whose stop request (deferred, as in training) gets `first`, then `second`."""
    script = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); from runtime import launch\n"
        "stop = launch.StopRequest(); stop.deferred = True; stop.install((signal.SIGUSR1,))\n"
        f"os.kill(os.getpid(), signal.{first})\n"
        "print('first request remembered', flush=True)\n"
        f"os.kill(os.getpid(), signal.{second})\n"
        "print('still running', signal.Signals(stop.signal_number).name)\n"
    )
    return run_script(script)


@pytest.mark.parametrize("first", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_ctrl_c_pressed_again_ends_the_process_at_once(first):
    done = second_request(first, "SIGINT")
    assert done.returncode == -signal.SIGINT
    assert done.stdout == "first request remembered\n"
    assert "SIGINT again: stopping at once, without saving" in done.stderr


@pytest.mark.parametrize(("first", "second"), [("SIGTERM", "SIGTERM"), ("SIGUSR1", "SIGTERM")])
def test_a_repeated_scheduler_signal_lets_the_save_go_on(first, second):
    """slurmstepd and srun both pass on a pre-emption's SIGTERM; scontrol requeue's SIGTERM
    follows a requeue signal: the first request is the one acted on."""
    done = second_request(first, second)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"first request remembered\nstill running {first}\n"


def test_ctrl_c_while_the_image_index_is_built_is_one_line(jpeg_root, tmp_path, monkeypatch):
    from datasets import folder_index

    build = folder_index.build_index

    def interrupted(data):
        os.kill(os.getpid(), signal.SIGINT)
        return build(data)

    monkeypatch.setattr(folder_index, "build_index", interrupted)
    flags = "-dataset imagenet -netType resnet -depth 18 -nEpochs 1 -nThreads 0"
    done = run_main(*flags.split(), "-data", jpeg_root, "-save", str(tmp_path / "save"),
                    "-gen", str(tmp_path / "gen"))  # fmt: skip
    assert done.returncode == 128 + signal.SIGINT
    assert done.stderr.strip() == "=> Stopped by SIGINT while loading the data; nothing was saved"
    assert not (tmp_path / "save").exists()


def test_ctrl_c_during_test_only_is_one_line(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path, "-depth 110 -batchSize 1 -testOnly true")

    def interrupt_after_the_first_batch(line):
        if line.startswith(" | Test: [0][1/20]"):
            os.kill(os.getpid(), signal.SIGINT)

    done = runs.main_run(argv, on_line=interrupt_after_the_first_batch)
    assert done.returncode == 128 + signal.SIGINT
    assert done.stderr.strip() == "=> Stopped by SIGINT while testing; nothing was saved"
    assert " * Results" not in done.stdout and os.listdir(tmp_path) == []


def test_retraining_a_1000_way_file_on_3_classes_warns_and_classify_still_names(
    jpeg_root, tmp_path
):
    import torchvision

    import models

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    flags = "-dataset imagenet -netType resnet -depth 18 -batchSize 8 -testOnly -nThreads 0"
    done = run_main(*flags.split(), "-data", jpeg_root, "-retrain", str(tmp_path / "resnet18.pth"),
                    "-gen", str(tmp_path / "gen"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "=> warning: the network has 1000 outputs for 3 classes" in done.stdout
    assert "add -resetClassifier true" in done.stdout
    # What such a run saves: 1000 outputs, the 3 class names of its folders.
    model = models.create("resnet", 18, "imagenet", nClasses=1000)
    arch = {"netType": "resnet", "depth": 18, "dataset": "imagenet", "nClasses": 1000}
    record = checkpoints.model_record(model, 1, arch, ["Zebra", "apple", "banana"])
    torch.save(record, tmp_path / "model_1.pth")
    apples = os.path.join(jpeg_root, "val", "apple")
    image = os.path.join(apples, sorted(os.listdir(apples))[0])
    classify = runs.script_run(
        os.path.join(ROOT, "scripts", "classify.py"), [tmp_path / "model_1.pth", image]
    )
    assert classify.returncode == 0, classify.stderr
    rows = [row.split("\t") for row in classify.stdout.splitlines()[1:6]]
    assert len(rows) == 5 and all(name.startswith("output ") or name in record["classes"]
                                  for _, name in rows)  # fmt: skip


def test_a_torchvision_file_of_another_depth_names_the_flags_that_fit(tmp_path):
    import torchvision

    import models
    from models import loading

    model = models.create("resnet", 18, "imagenet")
    for built, flags in ((torchvision.models.resnet50, "-netType resnet -depth 50"),
                         (torchvision.models.resnext50_32x4d,
                          "-netType resnext -depth 50 -cardinality 32 -baseWidth 4")):  # fmt: skip
        with pytest.raises(checkpoints.CheckpointError) as caught:
            loading.load_weights(model, built().state_dict(), "file.pth")
        message = str(caught.value)
        assert "\n" not in message and len(message) < 400, message
        assert message.startswith("the weights in file.pth do not fit this network (")
        assert message.endswith(f"it fits {flags}")


def test_a_write_error_in_a_helper_thread_prints_no_traceback():
    """TensorBoard's writer thread on a full disk: the main thread reports it in one line."""
    script = (
        "import sys, threading; sys.path.insert(0, sys.argv[1]); from runtime import launch\n"
        "def fail(error):\n"
        "    raise error\n"
        "launch.quiet_thread_write_errors()\n"
        "for error in (OSError(28, 'No space left on device'), ZeroDivisionError('other')):\n"
        "    thread = threading.Thread(target=fail, args=(error,))\n"
        "    thread.start()\n"
        "    thread.join()\n"
    )
    done = run_script(script)
    assert done.returncode == 0
    assert "No space left" not in done.stderr and "ZeroDivisionError: other" in done.stderr
