"""End to end: python main.py on real images, as a user runs it (the Lua's training loop and checkpoints)."""

import json
import os
import re
import sys
import threading

import pytest
import runs
import torch
from conftest import TIMEOUT

import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*argv, cwd=None, env=None):
    """python main.py argv, run in this process; the finished run with its text output."""
    return runs.main_run(argv, env=env, cwd=cwd)


def small_cifar_args(data, save, flags="-nEpochs 1"):
    """Arguments of a ResNet-8 run on the CIFAR-10 sample with extra flags in one string."""
    base = {"-dataset": "cifar10", "-netType": "resnet", "-depth": "8", "-nThreads": "0"}
    given = flags.split()
    kept = [word for flag, value in base.items() if flag not in given for word in (flag, value)]
    return [*kept, *given, "-data", data, "-save", str(save)]


def small_cifar_run(data, save, flags):
    """A ResNet-8 run on the CIFAR-10 sample with extra flags given as one string."""
    return run_main(*small_cifar_args(data, save, flags))


@pytest.fixture(scope="module")
def cifar_run(cifar10_root, tmp_path_factory):
    """The issue's command: ResNeXt-29 2x16d on the real CIFAR-10 sample, 2 epochs, then resumed."""
    save = str(tmp_path_factory.mktemp("run"))
    flags = "-dataset cifar10 -depth 29 -cardinality 2 -baseWidth 16 -batchSize 8 -nThreads 0"
    common = [*flags.split(), "-data", cifar10_root, "-save", save, "-gen", f"{save}/gen"]
    first = run_main(*common, "-nEpochs", "2")
    resumed = run_main(*common, "-nEpochs", "3", "-resume", save)
    return save, common, first, resumed


def test_trains_two_epochs_with_the_lua_lines(cifar_run):
    _, _, first, _ = cifar_run
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "Deploying ResNeXt bottleneck block form C (group convolution)" in out
    assert " | ResNet-29 cifar10" in out
    assert "=> Training epoch # 1" in out and "=> Training epoch # 2" in out
    number = r"[ \d]{3}\.\d{3}"
    assert re.search(
        rf" \| Epoch: \[2\]\[3/3\]    Time \d+\.\d{{3}}  Data \d+\.\d{{3}}  Err \d+\.\d{{4}}"
        rf"  top1 {number}  top5 {number}  \(\d+:\d\d:\d\d elapsed; left: epoch"
        rf" \d+:\d\d:\d\d, run \d+:\d\d:\d\d\)\n",
        out,
    )
    assert re.search(rf" \| Test: \[1\]\[3/3\]    Time .* top1 {number} \({number}\)  top5 ", out)
    assert re.search(rf" \* Finished epoch # 2     top1: {number}  top5: {number}\n\n", out)
    assert re.search(r" \* Best model \t[\d.]+\t[\d.]+\n", out)
    assert re.search(r" \* Finished top1: [ \d]{2}\.\d{3}  top5: ", out)


def test_writes_the_checkpoint_files_and_options(cifar_run):
    save, _, _, _ = cifar_run
    expected = {"model_1.pth", "model_2.pth", "optimState_1.pth", "optimState_2.pth"}
    assert expected | {"latest.pth", "model_best.pth", "opts.json"} <= set(os.listdir(save))
    options = json.load(open(os.path.join(save, "opts.json")))  # the resumed run's options
    assert options["cardinality"] == 2 and options["nEpochs"] == 3 and options["resume"] == save
    assert options["arch"]["baseWidth"] == 16 and options["arch"]["nClasses"] is None


def test_every_saved_file_loads_weights_only_into_a_fresh_model(cifar_run):
    save, _, _, _ = cifar_run
    for name in os.listdir(save):
        if name.endswith(".pth"):
            content = torch.load(os.path.join(save, name), weights_only=True)
            if name.startswith("model_"):
                model = models.create(**content["arch"])
                model.load_state_dict(content["model"], strict=True)
                assert content["classes"][0] == "airplane"


def test_resume_continues_at_the_next_epoch(cifar_run):
    save, _, _, resumed = cifar_run
    assert resumed.returncode == 0, resumed.stderr
    assert f"=> Loading checkpoint {save}/latest.pth" in resumed.stdout
    assert "=> Training epoch # 3" in resumed.stdout
    assert "# 1\n" not in resumed.stdout and "# 2\n" not in resumed.stdout
    assert torch.load(os.path.join(save, "latest.pth"), weights_only=True)["epoch"] == 3


def test_best_top1_survives_the_resume(cifar_run):
    save, _, first, resumed = cifar_run
    finished = r"Finished epoch # \d+     top1:\s+([\d.]+)"
    best_before = min(float(m) for m in re.findall(finished, first.stdout))
    epoch3 = float(re.search(finished, resumed.stdout).group(1))
    latest = torch.load(os.path.join(save, "latest.pth"), weights_only=True)
    assert latest["bestTop1"] == pytest.approx(min(best_before, epoch3), abs=1e-3)
    assert (" * Best model " in resumed.stdout) == (epoch3 < best_before)


def test_the_finished_line_is_followed_by_the_best_epoch_and_the_last(cifar_run):
    _, _, first, resumed = cifar_run
    tested = r" \* Finished epoch # (\d+)     top1:\s+([\d.]+)"
    errors = {int(e): float(t) for e, t in re.findall(tested, first.stdout + resumed.stdout)}
    best_epoch = min(errors, key=lambda epoch: (errors[epoch], epoch))
    said = re.search(r" \* Finished top1:\s+([\d.]+)  top5: .*\n(=> best: .*)\n", resumed.stdout)
    assert float(said.group(1)) == errors[best_epoch]  # the Lua's figure is the best epoch's
    assert said.group(2) == (
        f"=> best: epoch {best_epoch} of 3, top1 {errors[best_epoch]:.3f}; last epoch (3)"
        f" {errors[3]:.3f}"
    )


def test_test_only_evaluates_the_resumed_model(cifar_run):
    save, common, _, _ = cifar_run
    out = run_main(*common, "-nEpochs", "3", "-resume", save, "-testOnly", "true")
    assert out.returncode == 0, out.stderr
    assert re.search(r" \* Results top1: [ \d]{2,3}\.\d{3}  top5: [ \d]{2,3}\.\d{3}\n", out.stdout)
    assert "Training epoch" not in out.stdout


def test_a_folder_without_checkpoint_starts_from_scratch_at_epoch_number(cifar10_root, tmp_path):
    flags = f"-batchSize 10 -nEpochs 3 -epochNumber 3 -resume {tmp_path}"
    out = small_cifar_run(cifar10_root, tmp_path / "save", flags)
    assert out.returncode == 0, out.stderr
    assert f"=> No checkpoint in {tmp_path}: training starts from scratch" in out.stdout
    assert "=> Training epoch # 3" in out.stdout and "# 1\n" not in out.stdout
    assert sorted(n for n in os.listdir(tmp_path / "save") if n.endswith(".pth"))[:2] == [
        "latest.pth",
        "model_3.pth",
    ]


def test_a_fixed_seed_repeats_the_run_with_two_workers(cifar10_root, tmp_path):
    def losses(name):
        flags = "-batchSize 6 -nEpochs 2 -manualSeed 7 -nThreads 2"
        out = small_cifar_run(cifar10_root, tmp_path / name, flags)
        assert out.returncode == 0, out.stderr
        return re.findall(r"Err (\d+\.\d+)", out.stdout)

    first = losses("a")
    assert len(first) == 8 and first == losses("b")


def test_optim_state_flag_loads_the_momentum_buffers(cifar_run):
    import recipe
    from run import plan

    save, common, _, _ = cifar_run
    parsed = plan.parse([*common, "-optimState", os.path.join(save, "optimState_2.pth")])
    model = models.create("resnext", 29, "cifar10", cardinality=2, baseWidth=16)
    optimizer = recipe.make_optimizer(model, plan.training_recipe(parsed), checkpoint=None)
    saved = torch.load(os.path.join(save, "optimState_2.pth"), weights_only=True)
    assert len(optimizer.state) == len(saved["state"]) > 0
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(first, saved["state"][0]["momentum_buffer"])


def test_fine_tune_a_folder_dataset_from_a_torchvision_state_dict(jpeg_root, tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    flags = "-dataset imagenet -netType resnet -depth 18 -resetClassifier true -nClasses 3"
    out = run_main(
        *flags.split(), *"-batchSize 8 -nEpochs 1 -nThreads 0".split(),
        "-data", jpeg_root, "-retrain", str(tmp_path / "resnet18.pth"),
        "-save", str(tmp_path / "save"), "-gen", str(tmp_path / "gen"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert " => Replacing classifier with 3-way classifier" in out.stdout
    record = torch.load(tmp_path / "save" / "model_1.pth", weights_only=True)
    assert record["model"]["fc.weight"].shape == (3, 512)
    assert record["classes"] == ["Zebra", "apple", "banana"]


def test_precise_bn_recomputes_the_statistics_before_each_test(cifar10_root, tmp_path):
    out = small_cifar_run(cifar10_root, tmp_path, "-nEpochs 2 -batchSize 4 -preciseBN 7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if "Recomputed BatchNorm" in line]
    recomputed = "=> Recomputed BatchNorm statistics on 8 training images"
    assert [lines[i] for i in said] == [recomputed] * 2  # once per epoch
    assert all(lines[i + 1].startswith(" | Test: [") for i in said)  # just before testing
    model = torch.load(tmp_path / "model_2.pth", weights_only=True)["model"]
    tracked = {k: int(v) for k, v in model.items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {2}  # 2 batches of 4, not 10 training steps


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("-dataset nope", "unknown -dataset nope"),
        ("-dataset imagenet -data /missing", "missing ImageNet data directory"),
        ("-batchSize 0", "-batchSize must be positive"),
        ("-nEpochs -3", "-nEpochs must be positive"),
        ("-LR x", "invalid float value"),
        ("-momentum 1", "-momentum must be in [0, 1)"),
        ("-sav x", "unknown flag -sav"),
        ("-shareGradInput true -optnet true", "cannot use both"),
        ("-depth 21 -netType resnet", "6n+2"),
        ("-depth 30", "9n+2"),
        ("-precision half", "-precision half needs a CUDA or MPS device"),
        ("-netType resnet -depth 8 -frozenStages 4", "frozenStages must be -1 (none) to 3"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(flags, message, cifar10_root, tmp_path):
    argv = flags.split()
    if "-dataset" not in argv:
        argv = ["-dataset", "cifar10", "-data", cifar10_root, *argv]
    out = run_main(*argv, "-save", str(tmp_path / "save"), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "save").exists()


def test_resuming_another_network_is_refused_and_changes_nothing(cifar_run):
    save, common, _, _ = cifar_run
    before = {n: os.path.getmtime(os.path.join(save, n)) for n in os.listdir(save)}
    other = [a if a != "2" else "4" for a in common]  # -cardinality 4 instead of 2
    out = run_main(*other, "-nEpochs", "5", "-resume", save)
    assert out.returncode == 2
    assert "holds a checkpoint of another network: cardinality 2 (asked: 4)" in out.stderr
    assert {n: os.path.getmtime(os.path.join(save, n)) for n in os.listdir(save)} == before


def test_a_broken_retrain_file_is_named(cifar10_root, tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"this is not a checkpoint")
    out = small_cifar_run(cifar10_root, tmp_path / "save", f"-retrain {tmp_path}/bad.pth")
    assert out.returncode == 2 and "bad.pth" in out.stderr and "Traceback" not in out.stderr


def test_records_every_printed_step_and_epoch_and_a_resumed_run_appends(cifar_run):
    save, _, _, _ = cifar_run
    with open(os.path.join(save, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    segments = [r for r in records if r["split"] == "segment"]  # where each part ran
    assert len(segments) == 2 and records[0] == segments[0]
    assert set(segments[0]) == {"split", "epoch", "iter", "started", "cpu", "cores", "device",
                                "torch"}  # fmt: skip
    assert [(r["epoch"], r["iter"]) for r in segments] == [(1, 0), (3, 0)]
    assert segments[0]["device"] == "cpu" and segments[0]["torch"] == torch.__version__
    records = [r for r in records if r["split"] != "segment"]
    summaries = [(r["epoch"], r["split"]) for r in records if r["iter"] is None]
    assert summaries == [(e, s) for e in (1, 2, 3) for s in ("train", "val")]
    steps = [r for r in records if r["split"] == "train" and r["iter"] is not None]
    assert [(r["epoch"], r["iter"]) for r in steps] == [
        (e, i) for e in (1, 2, 3) for i in (1, 2, 3)
    ]
    assert {"loss", "top1", "top5", "lr", "img_s", "seconds"} <= set(steps[0])
    assert len(os.listdir(os.path.join(save, "tb"))) == 2  # one event file per run


def run_on_terminal(argv, columns: int, cwd, rows: int = 40) -> str:
    """python main.py argv with stdout on a pseudo-terminal of `columns` columns and `rows`
    rows (0: one that reports no size); returns what the terminal received."""
    import fcntl
    import pty
    import struct
    import termios

    import main

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    received = []
    reader = threading.Thread(target=read_terminal, args=(leader, received))
    reader.start()  # a terminal nobody reads blocks its writer once its buffer is full
    with runs.environment(env, cwd), runs.captured() as output:
        saved, sys.stdout = sys.stdout, runs.text_stream(follower)
        try:
            status = main.main([str(word) for word in argv])
        finally:
            sys.stdout = saved
    os.close(follower)  # the reader sees the terminal close
    reader.join(timeout=TIMEOUT)
    assert status == 0, output.stderr
    return b"".join(received).decode(errors="replace")


def read_terminal(leader: int, received: list) -> None:
    """Append what the pseudo-terminal's leader side receives until it closes."""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed
            return
        if not chunk:
            return
        received.append(chunk)


@pytest.mark.parametrize("columns", [160, 80, 0])
def test_a_terminal_gets_progress_bars_that_fit_it(cifar10_root, tmp_path, columns):
    """tqdm bars with the running loss and error, img/s and data share, never wider than the
    terminal (a terminal reporting 0 columns is taken as 80); no top-5 of 10 classes at 80."""
    text = run_on_terminal(small_cifar_args(cifar10_root, tmp_path), columns, tmp_path)
    assert "train 1 100%" in text and "val 1 100%" in text
    assert " | Epoch: [1]" not in text  # the plain lines are for logs, not terminals
    assert " * Finished epoch # 1" in text
    bars = [part for line in text.split("\n") for part in line.split("\r") if "img/s" in part]
    assert bars and all("err@1" in bar and "data" in bar for bar in bars)
    width = columns or 80
    assert all(len(bar.rstrip()) <= width for bar in bars), max(bars, key=len)
    assert all(("err@5" in bar) == (width >= 110) for bar in bars)
    assert all(("lr 0.1" in bar) == (width >= 110) for bar in bars if "train 1" in bar)


def test_a_bar_closed_by_an_error_ends_its_line_and_is_not_redrawn(capsys):
    from progress import Progress

    progress = Progress(bar=True)
    progress.begin("train", 1, 10, 0)
    with pytest.raises(KeyboardInterrupt), progress.closing_on_error():
        raise KeyboardInterrupt
    assert progress.bar is None
    print("=> Stopped")
    out = capsys.readouterr().out
    assert out.endswith("\n=> Stopped\n") and out.count("train 1") >= 1
