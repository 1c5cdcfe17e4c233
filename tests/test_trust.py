"""Trust, round 3: the launch paths, the EMA and fine-tuning checks and the first screen
that a hostile run broke. Each bad input is one 'error:' line naming what to fix, exit 2,
no traceback, no hang, nothing written. Processes are real where the defect is in one."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import runs
import torch
from conftest import TIMEOUT
from test_cli import run_main, run_on_terminal, small_cifar_args
from test_day_one import snapshot

import opts as options
from run import plan
from runtime import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
PROMPT = 30  # seconds: a check that needs no peer ends well within this (a hang fails)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def without_launchers() -> dict:
    """This environment less any launcher's variables (srun's, torchrun's)."""
    launchers = ("SLURM_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC")
    return {k: v for k, v in os.environ.items() if not k.startswith(launchers)}


def srun_task(rank, tasks=2, port=None, **changes) -> dict:
    """The environment srun gives task `rank` of a step on this host; None drops a variable."""
    outside = without_launchers()
    task = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": "0", "SLURM_NTASKS": str(tasks),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": str(port or free_port())}  # fmt: skip
    task.update(changes)
    return {**outside, **{k: v for k, v in task.items() if v is not None}}


def assert_one_error_line(done, *words: str, status: int = 2) -> None:
    """Exit status, one 'error:' line on stderr holding words, no traceback."""
    assert done.returncode == status, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for word in words:
        assert word in lines[0]


# 1, 2: launcher variables


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SLURM_PROCID": "3"}, "SLURM_PROCID=3"),
        ({"SLURM_PROCID": "-1"}, "SLURM_PROCID=-1"),
        ({"SLURM_PROCID": None}, "SLURM_PROCID is not set"),
        ({"SLURM_STEP_NUM_TASKS": "two"}, "SLURM_STEP_NUM_TASKS='two'"),
        ({"SLURM_PROCID": "x1"}, "SLURM_PROCID='x1'"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http'"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        ({"MASTER_PORT": None, "SLURM_JOB_ID": "job7"}, "SLURM_JOB_ID='job7'"),
        ({"SLURM_STEP_NUM_TASKS": None, "SLURM_NTASKS": "2.5"}, "SLURM_NTASKS='2.5'"),
    ],
)
def test_a_launcher_variable_out_of_place_is_named_before_any_rendezvous(changes, named):
    with pytest.raises(launch.StartError, match=named.replace("(", r"\(")):
        launch.job_environment(srun_task(0, **changes))


@pytest.mark.parametrize(
    "environ",
    [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "4", "RANK": "one"},
     {"WORLD_SIZE": "2", "RANK": "1"}],  # no MASTER_ADDR: nobody to meet
)  # fmt: skip
def test_torchrun_variables_set_by_hand_are_checked_too(environ):
    with pytest.raises(launch.StartError, match="RANK|MASTER_ADDR"):
        launch.job_environment(environ)


def test_a_rank_beyond_the_tasks_ends_at_once_without_waiting_or_writing(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path / "save")
    done = run_main(*argv, env=srun_task(3))
    assert_one_error_line(done, "SLURM_PROCID=3", "SLURM_STEP_NUM_TASKS=2")
    assert not (tmp_path / "save").exists()


# 3, 4: waiting for the other processes


def alone(rank, cifar10_root, save, port, *flags):
    """Task `rank` of a two-task srun step whose other task never starts."""
    argv = [*small_cifar_args(cifar10_root, save), *flags]
    return runs.start_main(argv, env=srun_task(rank, port=port), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip


def listening(port: int, process) -> bool:
    """Wait until something accepts connections on port (rank 0's store is up); False if
    the process ended first."""
    while process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)  # a pause that ends early if it exits
    return False


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rendezvous_that_does_not_complete_names_who_was_missing(rank, cifar10_root, tmp_path):
    port = free_port()
    task = alone(rank, cifar10_root, tmp_path / "save", port, "-rendezvousTimeout", "1")
    out, err = task.communicate(timeout=PROMPT)
    done = subprocess.CompletedProcess(task.args, task.returncode, out, err)
    expected = "for rank 1 of 2" if rank == 0 else f"nothing answered at localhost:{port}"
    assert_one_error_line(done, expected, "-rendezvousTimeout")
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_waiting_for_the_others_ends_the_process(number, cifar10_root,
                                                                     tmp_path):  # fmt: skip
    port = free_port()
    task = alone(0, cifar10_root, tmp_path / "save", port)
    assert listening(port, task), task.communicate()[1]
    task.send_signal(number)
    out, err = task.communicate(timeout=5)  # the rendezvous itself would wait 300 s
    assert task.returncode == 128 + number
    name = signal.Signals(number).name
    assert err.strip() == f"=> Stopped by {name} while waiting for the other processes of the job;" \
        " nothing was saved"  # fmt: skip
    assert not (tmp_path / "save").exists()


def test_a_stop_signal_while_waiting_for_rank_0s_data_ends_the_process(cifar10_root, tmp_path):
    """Rank 0 prepares the data and never finishes; rank 1, waiting for it in a
    collective, is stopped (here by itself, right after the collective started) and ends,
    through main.py's own exit: the process group it leaves must not hold it."""
    port = free_port()
    as_main = ("import runpy; sys.argv = [os.path.join(sys.argv[1], 'main.py'), *sys.argv[2:]]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")  # fmt: skip
    blocked = ("import os, sys, threading; sys.path.insert(0, sys.argv[1]); import datasets\n"
               "datasets.create_loaders = lambda *a: threading.Event().wait()\n" + as_main)  # fmt: skip
    stopped = ("import os, signal, sys; sys.path.insert(0, sys.argv[1])\n"
               "import torch.distributed as dist\n"
               "reduce = dist.all_reduce\n"
               "def reduce_then_stop(*args, **kwargs):\n"
               "    work = reduce(*args, **kwargs)\n"
               "    os.kill(os.getpid(), signal.SIGTERM)\n"
               "    return work\n"
               "dist.all_reduce = reduce_then_stop\n" + as_main)  # fmt: skip
    argv = small_cifar_args(cifar10_root, tmp_path / "save")
    tasks = [subprocess.Popen([sys.executable, "-c", script, ROOT, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=srun_task(rank, port=port))
             for rank, script in enumerate((blocked, stopped))]  # fmt: skip
    try:
        _, err = tasks[1].communicate(timeout=PROMPT)
    finally:
        tasks[0].kill()
        tasks[0].communicate(timeout=PROMPT)
    assert tasks[1].returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "=> Stopped by SIGTERM while loading the data; nothing was saved"


def test_processes_started_by_hand_meet_and_train(cifar10_root, tmp_path):
    """WORLD_SIZE / RANK / MASTER_ADDR / MASTER_PORT set by hand (no torchrun agent): the
    same rendezvous as srun's."""
    port, outside = str(free_port()), without_launchers()
    argv = small_cifar_args(cifar10_root, tmp_path)
    tasks = [runs.start_main(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**outside, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for rank in range(2)]  # fmt: skip
    outputs = [task.communicate(timeout=TIMEOUT) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1] + outputs[1][1]
    assert "=> Distributed: 2 processes, one CPU each (gloo, started by WORLD_SIZE / RANK /" \
        " MASTER_ADDR)" in outputs[0][0]  # fmt: skip
    assert (tmp_path / "model_1.pth").exists()


@contextlib.contextmanager
def a_port_that_is_no_store():
    """A port on this machine where something listens but never speaks: connections are
    accepted (by the backlog) and nothing is ever answered, as another service might."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield str(listener.getsockname()[1])


@pytest.mark.parametrize("agent_store", [False, True], ids=["by hand", "agent store"])
def test_a_port_held_by_something_else_is_one_line_within_the_timeout(
    agent_store, cifar10_root, tmp_path
):
    """torch's store client would wait minutes there, deaf to -rendezvousTimeout and signals."""
    agent = {"TORCHELASTIC_USE_AGENT_STORE": "True"} if agent_store else {}
    with a_port_that_is_no_store() as port:
        env = {**without_launchers(), "WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, **agent}  # fmt: skip
        task = runs.start_main([*small_cifar_args(cifar10_root, tmp_path / "run"),
                                "-rendezvousTimeout", "2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
        _, err = task.communicate(timeout=PROMPT)
    assert task.returncode == 2, err
    assert err == (
        f"error: 127.0.0.1:{port} answers, but not as rank 0's store (no answer as a store within"
        " 2 s; -rendezvousTimeout): another service may hold that port; set MASTER_PORT to a"
        " free port in every process\n"
    )
    assert not (tmp_path / "run").exists()


def test_an_agent_store_that_is_not_there_is_one_line(cifar10_root, tmp_path):
    argv = [*small_cifar_args(cifar10_root, tmp_path / "run"), "-rendezvousTimeout", "1"]
    env = {**without_launchers(), "WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "TORCHELASTIC_USE_AGENT_STORE": "True"}  # fmt: skip
    done = runs.main_run(argv, env=env)
    assert done.returncode == 2 and done.stderr == (
        f"error: nothing answered at 127.0.0.1:{env['MASTER_PORT']} within 1 s"
        " (-rendezvousTimeout): TORCHELASTIC_USE_AGENT_STORE=True means torchrun's agent"
        " listens there; start the job with torchrun, or unset TORCHELASTIC_USE_AGENT_STORE\n"
    )
    del env["MASTER_ADDR"]
    done = runs.main_run(argv, env=env)
    assert done.returncode == 2 and done.stderr.startswith(
        "error: TORCHELASTIC_USE_AGENT_STORE=True but MASTER_ADDR is not set"
    )
    assert not (tmp_path / "run").exists()


# 11: empty paths, directories for files


@pytest.mark.parametrize("flag", ["-save", "-gen", "-resume", "-data", "-weights"])
def test_an_empty_path_is_refused(flag, cifar10_root, tmp_path):
    given = {"-dataset": "cifar10", "-data": cifar10_root, "-save": str(tmp_path), flag: ""}
    with pytest.raises(options.UsageError, match=f"^{flag} is empty"):
        plan.parse([word for pair in given.items() for word in pair])


def test_a_directory_given_for_a_file_says_it_is_a_directory(cifar10_root, jpeg_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path / "save")
    for flag in ("-retrain", "-optimState"):
        with pytest.raises(options.UsageError, match=f"{flag} {tmp_path} is a directory"):
            plan.parse([*argv, flag, str(tmp_path)])
    script = os.path.join(ROOT, "scripts", "classify.py")
    done = runs.script_run(script, [tmp_path, jpeg_root])
    assert_one_error_line(done, f"{tmp_path} is a directory, not a checkpoint file")


# 14: a terminal that reports 0 x 0


def test_the_progress_bar_shows_on_a_terminal_of_0_rows_and_0_columns(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 4")
    text = run_on_terminal(argv, 0, tmp_path, rows=0)  # as a new pseudo-terminal reports
    assert "train 1 100% 5/5 [" in text and "val 1 100% 5/5 [" in text


# 16: -testOnly's lines; top-5 with 5 classes or fewer


def test_test_only_prints_its_results_line_alone(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 10")
    assert run_main(*argv).returncode == 0
    tested = run_main(*argv, "-testOnly", "true", "-resume", str(tmp_path))
    assert tested.returncode == 0, tested.stderr
    assert " * Finished epoch" not in tested.stdout
    assert tested.stdout.count(" * Results top1: ") == 1


def test_top5_is_a_dash_with_three_classes(jpeg_root, tmp_path):
    flags = ["-dataset", "imagenet", "-netType", "resnet", "-depth", "18", "-nThreads", "0",
             "-cropSize", "32", "-batchSize", "5", "-data", jpeg_root, "-save", str(tmp_path),
             "-gen", str(tmp_path / "gen")]  # fmt: skip
    trained = run_main(*flags, "-nEpochs", "1")
    assert trained.returncode == 0, trained.stderr
    assert " * Finished epoch # 1     top1: " in trained.stdout
    printed = [line for line in trained.stdout.splitlines() if line.startswith((" | ", " * "))]
    for line in (line for line in printed if " top5" in line):
        line = line.split("  (", 1)[0] if "elapsed; left:" in line else line  # the time left
        assert line.rstrip().endswith(
            ("top5       -", "(      -)", "top5:       -", "top5:      -")
        ), line
    tested = run_main(*flags, "-testOnly", "true", "-resume", str(tmp_path))
    assert tested.stdout.splitlines()[-1].endswith("top5:      -")


# 17: a mistyped flag


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("-nEpoch", "-nEpochs"), ("-lr", "-LR"), ("-batchsize", "-batchSize"), ("--weight", "-weights"),
     ("-retrian", "-retrain")],
)  # fmt: skip
def test_an_unknown_flag_suggests_the_closest_known_one(typed, meant):
    with pytest.raises(options.UsageError, match=f"did you mean {meant}\\?"):
        plan.parse([typed, "3"])


def test_a_flag_like_no_other_suggests_nothing():
    with pytest.raises(options.UsageError) as refused:
        plan.parse(["-xyzzy", "3"])
    assert "did you mean" not in str(refused.value)


# 6-9: the average, -testOnly, -normEval


def test_an_average_never_updated_in_an_epoch_is_refused(cifar10_root, tmp_path):
    argv = small_cifar_args(
        cifar10_root, tmp_path / "save", "-nEpochs 1 -batchSize 4 -ema 0.9 -emaEvery 6"
    )
    assert_one_error_line(run_main(*argv), "-emaEvery 6 is more than the 5 steps of an epoch")
    assert not (tmp_path / "save").exists()
    every_step = small_cifar_args(
        cifar10_root, tmp_path / "save", "-nEpochs 1 -batchSize 4 -ema 0.9 -emaEvery 5"
    )
    assert run_main(*every_step).returncode == 0


def test_resuming_an_averaged_run_without_ema_is_refused_and_changes_nothing(cifar10_root,
                                                                             tmp_path):  # fmt: skip
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 4 -ema 0.8 -emaEvery 2")
    assert run_main(*argv).returncode == 0
    before = snapshot(tmp_path)
    plain = small_cifar_args(cifar10_root, tmp_path, "-batchSize 4 -nEpochs 2")
    resumed = run_main(*plain, "-resume", str(tmp_path))
    assert_one_error_line(resumed, "keeps an average of the weights", "-ema 0.8 -emaEvery 2")
    assert snapshot(tmp_path) == before
    again = run_main(*plain, "-resume", str(tmp_path), "-ema", "0.8", "-emaEvery", "2")
    assert again.returncode == 0, again.stderr


def test_test_only_names_the_training_options_it_ignores(cifar10_root, tmp_path, monkeypatch):
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 10")
    assert run_main(*argv).returncode == 0
    monkeypatch.setitem(sys.modules, "wandb", None)  # a tracker not installed: not needed to test
    extra = ["-mixup", "0.2", "-labelSmoothing", "0.1", "-autoAugment", "ta_wide", "-ema", "0.9",
             "-logger", "wandb"]  # fmt: skip
    tested = run_main(*argv, "-testOnly", "true", "-resume", str(tmp_path), *extra)
    assert tested.returncode == 0, tested.stderr
    warnings = [line for line in tested.stdout.splitlines() if "warning: -testOnly" in line]
    assert len(warnings) == 1 and "Logging to" not in tested.stdout
    for flag in ("-mixup 0.2", "-labelSmoothing 0.1", "-autoAugment ta_wide", "-logger wandb",
                 "-ema 0.9 (the model keeps no average"):  # fmt: skip
        assert flag in warnings[0]
    plain = run_main(*argv, "-testOnly", "true", "-resume", str(tmp_path))
    assert "warning" not in plain.stdout


def test_test_only_of_an_averaged_model_takes_ema_without_a_warning(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 4 -ema 0.8")
    assert run_main(*argv).returncode == 0
    tested = run_main(*argv, "-testOnly", "true", "-resume", str(tmp_path))
    assert tested.returncode == 0, tested.stderr
    assert "(its -ema weights)" in tested.stdout and "warning" not in tested.stdout


def test_norm_eval_without_trained_statistics_is_refused(cifar10_root, tmp_path):
    argv = small_cifar_args(cifar10_root, tmp_path / "save", "-nEpochs 1 -normEval true")
    assert_one_error_line(run_main(*argv), "-normEval true", "-retrain FILE or -weights NAME")
    assert not (tmp_path / "save").exists()


# 15: fine-tuning on other images


def test_fine_tuning_on_other_images_warns_and_opts_json_records_the_network(fashion_root,
                                                                             jpeg_root, tmp_path):  # fmt: skip
    grey = ["-dataset", "fashionmnist", "-netType", "resnet", "-depth", "8", "-nThreads", "0",
            "-batchSize", "4", "-nEpochs", "1", "-data", fashion_root, "-save", str(tmp_path / "a")]  # fmt: skip
    assert run_main(*grey).returncode == 0
    colour = ["-dataset", "imagenet", "-data", jpeg_root, "-gen", str(tmp_path / "gen"), "-nThreads",
              "0", "-batchSize", "5", "-cropSize", "32", "-nEpochs", "1", "-resetClassifier", "true",
              "-retrain", str(tmp_path / "a" / "model_best.pth"), "-save", str(tmp_path / "b")]  # fmt: skip
    tuned = run_main(*colour)
    assert tuned.returncode == 0, tuned.stderr
    warnings = [line for line in tuned.stdout.splitlines() if "warning: these weights" in line]
    assert warnings == ["=> warning: these weights were trained on 28 x 28 grey images"
                        " (fashionmnist); this run feeds them 32 x 32 colour images (imagenet):"
                        " expect their first layers to adapt slowly"]  # fmt: skip
    recorded = json.loads((tmp_path / "b" / "opts.json").read_text())
    assert (recorded["netType"], recorded["depth"]) == ("resnet", 8)
    assert recorded["arch"]["depth"] == 8 and recorded["arch"]["nClasses"] == 3
    again = run_main(*grey[:-2], "-save", str(tmp_path / "c"), "-retrain",
                     str(tmp_path / "a" / "model_best.pth"))  # fmt: skip
    assert "warning: these weights" not in again.stdout


# 5: Ctrl-C while the modules load


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_torch_is_imported_is_one_line(number, cifar10_root, tmp_path):
    """`python main.py` (a process of its own: this one has torch already) signals itself
    as main.py's `import torch` starts."""
    script = ("import os, runpy, signal, sys\n"
              "def hook(event, args):\n"
              "    if event == 'import' and args[0] == 'torch':\n"
              f"        os.kill(os.getpid(), {int(number)})\n"
              "sys.addaudithook(hook)\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")  # fmt: skip
    argv = small_cifar_args(cifar10_root, tmp_path / "save")
    done = subprocess.run([sys.executable, "-c", script, MAIN, *argv], capture_output=True,
                          text=True, timeout=TIMEOUT)  # fmt: skip
    name = signal.Signals(number).name
    assert done.returncode == 128 + number, done.stderr[-2000:]
    assert done.stderr.strip() == f"=> Stopped by {name} while starting; nothing was saved"
    assert not (tmp_path / "save").exists()


# 10: sizes checked before the first epoch; an epoch is never lost to its test


def test_a_crop_beyond_memory_is_refused_at_start(jpeg_root, tmp_path):
    flags = ["-dataset", "imagenet", "-netType", "resnet", "-depth", "18", "-nThreads", "0",
             "-data", jpeg_root, "-gen", str(tmp_path / "gen"), "-save", str(tmp_path / "save")]  # fmt: skip
    done = run_main(*flags, "-valCrop", "100000")
    assert_one_error_line(done, "-valCrop 100000 needs over", "GiB", "give a smaller -valCrop")
    assert "Training epoch" not in done.stdout and not (tmp_path / "save").exists()


def run_failing_above(side: int, argv: list[str], monkeypatch):
    """main.py with a network that runs out of memory on images wider than side."""
    import models

    create = models.create

    def create_failing(**arch):
        model = create(**arch)
        forward = model.forward

        def guarded(images):
            if images.shape[-1] > side:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return forward(images)

        model.forward = guarded
        return model

    monkeypatch.setattr(models, "create", create_failing)
    return run_main(*argv)


def test_a_validation_batch_that_does_not_fit_fails_before_the_first_epoch(jpeg_root, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    flags = ["-dataset", "imagenet", "-netType", "resnet", "-depth", "18", "-nThreads", "0",
             "-batchSize", "5", "-nEpochs", "1", "-trainCrop", "32", "-valCrop", "64",
             "-data", jpeg_root, "-gen", str(tmp_path / "gen"), "-save", str(tmp_path / "save")]  # fmt: skip
    done = run_failing_above(32, flags, monkeypatch)
    assert_one_error_line(done, "out of memory", status=1)
    assert "=> Training epoch # 1" not in done.stdout
    assert not (tmp_path / "save").exists()


def test_an_epoch_whose_test_fails_is_kept_and_tested_on_resume(cifar10_root, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """The test pass fails only after the epoch trained (its batch is no larger than the
    probe's, so the failure comes from the data): the trained epoch is saved."""
    argv = small_cifar_args(cifar10_root, tmp_path, "-nEpochs 1 -batchSize 4")
    import train

    def failing(*args, **kwargs):
        raise OSError("cannot read image val/3.png: image file is truncated")

    with monkeypatch.context() as patched:
        patched.setattr(train.Evaluation, "test", failing)
        failed = run_main(*argv)
    assert_one_error_line(failed, "image file is truncated", status=1)
    record = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert (record["epoch"], record["iteration"], record["samples"]) == (1, 5, 20)
    resumed = run_main(*argv, "-resume", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "Training epoch" not in resumed.stdout and " * Finished epoch # 1 " in resumed.stdout
