"""torchrun on CPU with gloo: the same weights and errors as one process, rank-0-only output,
two "nodes" on one machine, and a dead rank ending the job (issue: many GPUs and machines)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import runs
import torch
from conftest import TIMEOUT, with_flags

from datasets.sampler import shard
from run import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


def torchrun(*launcher):
    return [sys.executable, "-m", "torch.distributed.run", *launcher, MAIN]


def cifar_flags(data, save, *extra):
    return with_flags(["-dataset", "cifar10", "-netType", "resnet", "-depth", "8", "-batchSize",
                       "4", "-LR", "0.05", "-nThreads", "0", "-memoryFormat", "contiguous",
                       "-data", data, "-save", str(save)], list(extra))  # fmt: skip


def run(command, env=None):
    """command as a process of its own (torchrun), run to a successful end (env: variables
    added to this process's)."""
    done = runs.process_run(command, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_main(*argv):
    """python main.py argv in this process, run to a successful end."""
    done = runs.main_run(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(save, name="model_1.pth"):
    return torch.load(os.path.join(save, name), weights_only=True)["model"]


@pytest.fixture(scope="module")
def one_process(cifar10_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("single")
    run_main(*cifar_flags(cifar10_root, save, "-nEpochs", "1"))
    return save


def test_two_processes_with_sync_bn_train_the_weights_of_one(cifar10_root, one_process, tmp_path):
    done = run([*torchrun("--standalone", "--nproc-per-node", "2"),
                *cifar_flags(cifar10_root, tmp_path, "-nEpochs", "1", "-syncBN", "true")])  # fmt: skip
    single, double = weights(one_process), weights(tmp_path)
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0, msg=name)
    assert done.stdout.count("=> Training epoch # 1") == 1  # rank 0 alone prints
    assert "=> Distributed: 2 processes, one CPU each (gloo, started by torchrun)" in done.stdout
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(one_process))


def test_precise_bn_over_two_processes_matches_one(cifar10_root, tmp_path):
    extra = ("-nEpochs", "1", "-syncBN", "true", "-preciseBN", "8")
    run_main(*cifar_flags(cifar10_root, tmp_path / "one", *extra))
    two = run([*torchrun("--standalone", "--nproc-per-node", "2"),
               *cifar_flags(cifar10_root, tmp_path / "two", *extra)])  # fmt: skip
    assert two.stdout.count("=> Recomputed BatchNorm statistics on 8 training images") == 1
    single, double = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in single:  # float rounding of the gradient all-reduce grows through the network
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=1e-4, msg=name)
    assert {int(v) for k, v in double.items() if k.endswith("num_batches_tracked")} == {2}


def results_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(" * Results"))


def test_distributed_validation_counts_every_image_once(cifar10_root, one_process):
    """20 test images over 3 processes, batches of 6: shares 2/2/2 three times, then 0/1/1."""
    flags = cifar_flags(cifar10_root, one_process, "-testOnly", "true", "-batchSize", "6",
                        "-resume", str(one_process))  # fmt: skip
    alone = run_main(*flags)
    three = run([*torchrun("--standalone", "--nproc-per-node", "3"), *flags])
    assert results_line(three.stdout) == results_line(alone.stdout)
    assert results_line(alone.stdout) != " * Results top1:  0.000  top5:  0.000"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_rendezvous_train_and_write_one_checkpoint(cifar10_root, tmp_path):
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]  # fmt: skip
    command = [*torchrun(*launcher), *cifar_flags(cifar10_root, tmp_path, "-nEpochs", "1")]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:]
    assert sum(out.count("=> Training epoch # 1") for out, _ in outputs) == 1
    assert sorted(os.listdir(tmp_path)) == ["latest.pth", "metrics.jsonl", "model_1.pth",
                                            "model_best.pth", "optimState_1.pth", "opts.json",
                                            "tb"]  # fmt: skip
    assert len(os.listdir(tmp_path / "tb")) == 1  # rank 0 alone records


def rank_pids() -> dict[int, int]:
    """pid of each torchrun worker process running main.py, by rank, from /proc."""
    ranks = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = dict(v.split(b"=", 1) for v in handle.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue  # ended meanwhile
        if MAIN.encode() in cmdline and b"TORCHELASTIC_RUN_ID" in environ and b"RANK" in environ:
            ranks[int(environ[b"RANK"])] = int(entry)
    return ranks


def test_a_dead_rank_ends_the_job_and_the_run_resumes(cifar10_root, tmp_path):
    flags = cifar_flags(cifar10_root, tmp_path, "-nEpochs", "40", "-batchSize", "2")
    job = subprocess.Popen([*torchrun("--standalone", "--nproc-per-node", "2"), *flags],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    for line in job.stdout:  # epoch 2 is saved once epoch 3 starts
        if line.startswith("=> Training epoch # 3"):
            break
    os.kill(rank_pids()[1], signal.SIGKILL)
    started = time.monotonic()
    _, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode != 0
    assert time.monotonic() - started < 120, "the job outlived its dead rank too long"
    resumed = run_main(*cifar_flags(cifar10_root, tmp_path, "-nEpochs", "3", "-batchSize", "2",
                                    "-resume", str(tmp_path)))  # fmt: skip
    assert "=> Loading checkpoint" in resumed.stdout
    assert os.path.exists(tmp_path / "model_3.pth")


@pytest.mark.parametrize(("size", "batch", "world"), [(20, 6, 3), (10, 4, 2), (7, 8, 4), (5, 4, 2)])
def test_shares_cover_every_sample_once_and_differ_by_at_most_one(size, batch, world):
    shares = [list(shard(0, size, batch, rank, world)) for rank in range(world)]
    for batches in zip(*shares, strict=True):  # the same global batches on every rank
        lengths = [len(part) for part in batches]
        assert max(lengths) - min(lengths) <= 1
    positions = sorted(p for rank in shares for part in rank for p in part)
    assert positions == list(range(size))


def test_training_drops_a_last_batch_too_small_for_every_rank():
    kept = [list(shard(0, 9, 4, rank, 2, whole_batches_only=True)) for rank in range(2)]
    assert [len(rank) for rank in kept] == [2, 2]  # 4 + 4 kept, the last single image not
    assert list(shard(0, 9, 4, 0, 1, whole_batches_only=True))[-1] == range(8, 9)  # one process


def test_a_global_batch_that_does_not_divide_among_the_processes_is_an_error(
    cifar10_root, tmp_path
):
    done = runs.main_run(cifar_flags(cifar10_root, tmp_path, "-batchSize", "10"),
                         env={**os.environ, "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": "29500"})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "error: -batchSize 10 (the global batch) does not divide among 4 processes;"
        " use a multiple of 4\n"
    )
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("flags", "note"),
    [
        ("-dataset cifar10 -batchSize 64", "suggests -LR 0.05 (0.1 x 64/128)"),
        ("-dataset cifar10 -batchSize 64 -LR 0.1", None),  # the user chose the LR
        ("-dataset cifar10 -batchSize 64 -testOnly", None),  # nothing is trained
        ("-dataset cifar10", None),  # the tool's own default batch
        ("-dataset cifar10 -batchSize 128", None),  # the recipe's batch
        ("-dataset imagenet -batchSize 512", "suggests -LR 0.2 (0.1 x 512/256)"),
    ],
)
def test_the_linear_scaling_rule_is_suggested_only_for_a_changed_batch(capsys, tmp_path, flags,
                                                                       note):  # fmt: skip
    import opts

    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    said = opts.linear_scaling_note(plan.parse([*flags.split(), "-data", str(tmp_path)]))
    assert (note in said and "\n" not in said) if note else said is None


def errors_in(line: str) -> tuple[float, float]:
    """(top1, top5) of a ' * Finished epoch' or ' * Results' line."""
    numbers = re.findall(r"top[15]:\s+([\d.]+)", line)
    return float(numbers[0]), float(numbers[1])


def srun_task(rank: int, port: int) -> dict:
    """The environment srun gives task `rank` of a two-task step on this host."""
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    return {**outside, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
            "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost",
            "MASTER_PORT": str(port)}  # fmt: skip


def test_srun_tasks_train_together_and_report_the_error_of_the_saved_model(cifar10_root, tmp_path):
    """Two srun tasks, each BatchNorm with its own statistics (no -syncBN): the error they
    report after the epoch is that of the model rank 0 saved, tested alone."""
    flags = cifar_flags(cifar10_root, tmp_path, "-nEpochs", "1", "-batchSize", "2")
    port = free_port()
    tasks = [runs.start_main(flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=srun_task(rank, port))
             for rank in range(2)]  # fmt: skip
    outputs = [task.communicate(timeout=TIMEOUT) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1][-2000:] + outputs[1][1]
    stdout = outputs[0][0]
    assert "=> Distributed: 2 processes, one CPU each (gloo, started by srun)" in stdout
    assert outputs[1][0] == ""  # rank 0 alone prints
    finished = next(line for line in stdout.splitlines() if line.startswith(" * Finished epoch"))
    alone = run_main(*with_flags(flags, ["-testOnly", "true", "-resume", str(tmp_path)]))
    assert errors_in(results_line(alone.stdout)) == errors_in(finished)
    state = torch.load(tmp_path / "latest.pth", weights_only=True)["state"]
    assert len(state["rng"]) == 2  # each process's generators


RECIPE = ("-lrSchedule", "cosine", "-warmupEpochs", "0.5", "-labelSmoothing", "0.1", "-ema",
          "0.9", "-normWeightDecay", "0", "-clipGradNorm", "1", "-autoAugment", "ta_wide",
          "-randomErasing", "0.5", "-repeatedAug", "2", "-syncBN", "true", "-nEpochs", "2",
          "-loss", "bce")  # fmt: skip


def test_two_processes_train_the_recipes_weights_and_average_of_one(cifar10_root, tmp_path):
    """The recipe's options act on the global batch: per-image draws by position, the
    schedule, clipping of the all-reduced gradient, and the average, as one process."""
    run_main(*cifar_flags(cifar10_root, tmp_path / "one", *RECIPE))
    run([*torchrun("--standalone", "--nproc-per-node", "2"),
         *cifar_flags(cifar10_root, tmp_path / "two", *RECIPE)])  # fmt: skip
    records = [torch.load(tmp_path / run_name / "model_2.pth", weights_only=True)
               for run_name in ("one", "two")]  # fmt: skip
    for part in ("model", "ema"):
        single = records[0][part] if part == "model" else records[0][part]["model"]
        double = records[1][part] if part == "model" else records[1][part]["model"]
        for name in single:
            torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=1e-4,
                                       msg=f"{part} {name}")  # fmt: skip


def test_mixing_under_torchrun_trains_with_bf16_and_optnet(cifar10_root, tmp_path):
    flags = cifar_flags(cifar10_root, tmp_path, *RECIPE, "-mixup", "0.2", "-cutmix", "1.0",
                        "-precision", "bf16", "-optnet", "true", "-optimizer", "adamw",
                        "-LR", "0.001", "-accumSteps", "2", "-logger", "mlflow",
                        "-memoryFormat", "channels_last")  # fmt: skip
    store = f"sqlite:///{tmp_path}/mlflow.db"
    done = run([*torchrun("--standalone", "--nproc-per-node", "2"), *flags],
               env={"MLFLOW_TRACKING_URI": store})  # fmt: skip
    assert done.stdout.count("=> Mixing training batches") == 1
    from mlflow import MlflowClient  # rank 0 alone logs: one run, each epoch once

    client = MlflowClient(store)
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert logged.info.status == "FINISHED"
    assert len(client.get_metric_history(logged.info.run_id, "epoch/val_top1")) == 2
    tested = run_main(*with_flags(flags, ["-testOnly", "true", "-resume", str(tmp_path)]))
    assert "(its -ema weights)" in tested.stdout
