"""The multi-GPU and multi-node paths, on CPUs: DataParallel's replica threads run through
torch's own parallel_apply, DistributedDataParallel's processes are gloo processes, GPU
counts and RNGs are mocked where nothing else shows the behaviour."""

import contextlib
import signal
from functools import partial

import pytest
import torch
import torch.distributed as dist
from ranks import run_ranks
from torch import nn
from trainers import cpu_trainer

import checkpoints
import errors
import main
import train
from datasets import DataError
from runtime import devices, launch, parallel, sync_batchnorm
from runtime.launch import Processes


@pytest.fixture
def replica_threads(monkeypatch):
    """torch.nn.parallel.parallel_apply as DataParallel runs it on GPUs (a thread per
    replica, autocast switched on there at the device's default dtype), on the CPU."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.accelerator, "current_stream", lambda *_: contextlib.nullcontext())
    monkeypatch.setattr(torch.accelerator, "device_index", lambda *_: contextlib.nullcontext())
    cpu_autocast = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device="cpu": cpu_autocast(device))
    monkeypatch.setattr(parallel, "uses_data_parallel", lambda *_: True)


def test_data_parallel_replicas_compute_in_the_dtype_asked_for(replica_threads):
    # On CPUs a new thread's autocast dtype is bf16, so float16 stands for -precision bf16
    # on GPUs, where a new thread's is float16.
    model = nn.Linear(4, 3)
    trained, evaluated = parallel.spread_model(model, torch.device("cpu"), n_gpu=2,
                                               autocast_dtype=torch.float16)  # fmt: skip
    assert isinstance(trained, nn.DataParallel) and evaluated is trained
    replicas = [trained.module, trained.module]
    with torch.autocast("cpu", dtype=torch.float16):
        outputs = nn.parallel.parallel_apply(replicas, [torch.randn(2, 4)] * 2, devices=[0, 1])
    assert [output.dtype for output in outputs] == [torch.float16, torch.float16]
    assert checkpoints.unwrap(trained) is model  # saved as the bare model
    assert list(checkpoints.model_record(trained, 1, {}, [])["model"]) == ["weight", "bias"]


def test_compile_with_data_parallel_is_refused_before_any_work(monkeypatch, cifar10_root, tmp_path,
                                                               capsys):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    status = main.main(["-dataset", "cifar10", "-data", cifar10_root, "-nGPU", "2", "-compile",
                        "true", "-save", str(tmp_path / "run")])  # fmt: skip
    assert status == 2
    assert capsys.readouterr().err == (
        "error: -compile true does not work with -nGPU 2 in one process (DataParallel); run one"
        " process per GPU instead: torchrun --nproc-per-node 2 main.py ... -compile true\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_compiled_distributed_model_is_evaluated_without_its_wrapper(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        trained, evaluated = parallel.spread_model(model, torch.device("cpu"), world=2,
                                                   compile_model=True)  # fmt: skip
    finally:
        dist.destroy_process_group()
    ddp = nn.parallel.DistributedDataParallel
    assert any(isinstance(module, ddp) for module in trained.modules())
    assert not any(isinstance(module, ddp) for module in evaluated.modules())
    assert checkpoints.unwrap(evaluated) is model


class FakeGpus:
    """torch.cuda's per-device RNG functions over `count` visible GPUs."""

    def __init__(self, monkeypatch, count: int, first_state: int = 0):
        self.count = count
        self.states = {i: torch.tensor([first_state + i], dtype=torch.uint8) for i in range(count)}
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)

    def get(self, device):
        return self.states[torch.device(device).index].clone()

    def set(self, state, device):
        index = torch.device(device).index
        if index >= self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        self.states[index] = state


def gpus(count: int) -> list[torch.device]:
    return [torch.device("cuda", i) for i in range(count)]


def test_a_run_of_8_gpus_resumes_on_4_with_the_generators_that_fit(monkeypatch, capsys):
    FakeGpus(monkeypatch, 8, first_state=100)
    saved = devices.rng_state(gpus(8))  # a DataParallel run on 8 GPUs
    fewer = FakeGpus(monkeypatch, 4)
    devices.restore_rng_state([saved], 0, gpus(4))
    assert [int(fewer.states[i]) for i in range(4)] == [100, 101, 102, 103]
    assert "holds the random generators of 8 GPUs for the 4 used now" in capsys.readouterr().out
    devices.restore_rng_state(saved, 0, gpus(4))  # a checkpoint of one state for all processes


def test_each_process_resumes_its_own_generators(monkeypatch, capsys):
    FakeGpus(monkeypatch, 8, first_state=50)
    saved = []
    for rank in range(2):
        torch.manual_seed(rank)
        saved.append(devices.rng_state([torch.device("cuda", rank)]))
    gpu = FakeGpus(monkeypatch, 8)
    devices.restore_rng_state(saved, 1, [torch.device("cuda", 1)])
    drawn = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.rand(3))
    assert int(gpu.states[1]) == 51
    devices.restore_rng_state(saved, 2, [torch.device("cuda", 2)])  # a third process: seeded
    assert "holds the random generators of 2 processes" in capsys.readouterr().out


def test_deterministic_cudnn_makes_cublas_deterministic_before_cuda_starts(monkeypatch, tmp_path,
                                                                          cifar10_root):  # fmt: skip
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seen = {}

    def start_processes(*_):
        seen["cublas"] = launch.os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        raise launch.StartError("stop here")

    monkeypatch.setattr(launch, "start_processes", start_processes)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled())  # fmt: skip
    rng = torch.get_rng_state()
    main.main(["-dataset", "cifar10", "-data", cifar10_root, "-cudnn", "deterministic",
               "-save", str(tmp_path), "-manualSeed", "7"])  # fmt: skip
    assert seen == {"cublas": ":4096:8"}
    # The run put back what it set for the process: a second run in it starts as the first.
    after = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())  # fmt: skip
    assert after == before and "CUBLAS_WORKSPACE_CONFIG" not in launch.os.environ
    assert torch.equal(torch.get_rng_state(), rng)
    environ = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    launch.configure_backends("deterministic", environ)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    assert environ == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}  # the user's own setting stays
    launch.configure_backends("fastest", environ := {})
    torch.backends.cudnn.benchmark = False
    assert environ == {}


# ---- in gloo processes: what DistributedDataParallel's processes must agree on ----


def sum_over(values):
    dist.all_reduce(values)
    return values


class Batches:
    """A sized loader of fixed batches that can act when a batch is handed out."""

    def __init__(self, batches, on_batch=None):
        self.batches, self.on_batch = batches, on_batch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for n, batch in enumerate(self.batches, 1):
            if self.on_batch:
                self.on_batch(n)
            yield batch


def tiny_trainer(model, lines, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return cpu_trainer(model, optimizer, lambda *_: 0.1, log=lines.append, reduce=sum_over,
                       **kwargs)  # fmt: skip


def validate_with_a_stop_on_rank_1(processes: Processes):
    torch.manual_seed(0)
    stop = launch.StopRequest(processes)
    stop.deferred = True
    seen = []

    def on_batch(n):
        seen.append(n)
        if processes.rank == 1 and n == 2:
            stop.signal_number = signal.SIGTERM  # the signal reaches rank 1 only

    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 5
    trainer = tiny_trainer(nn.Linear(4, 2), [])
    try:
        trainer.evaluation.test(1, Batches(batches, on_batch), stop=stop)
    except train.Interrupted as exc:
        return str(exc), seen, stop.signal_number
    return "finished", seen, stop.signal_number


def test_a_stop_during_validation_stops_every_process_at_the_same_batch(tmp_path):
    results = run_ranks(validate_with_a_stop_on_rank_1, 2, tmp_path)
    assert results == [("while testing epoch 1", [1, 2], signal.SIGTERM)] * 2


def global_batch_norm_in_double(processes: Processes):
    torch.manual_seed(0)
    images = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1
    norm = sync_batchnorm.convert(nn.Sequential(nn.BatchNorm2d(3))).double()
    share = images[processes.rank * 2 : processes.rank * 2 + 2]
    output = norm(share)
    return output.dtype, output.detach(), norm[0].running_mean, norm[0].running_var


def test_sync_batch_norm_in_double_precision_matches_one_process(tmp_path):
    results = run_ranks(global_batch_norm_in_double, 2, tmp_path)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1
    whole = nn.BatchNorm2d(3).double()
    expected = whole(images)
    for rank, (dtype, output, mean, var) in enumerate(results):
        assert dtype == torch.float64
        torch.testing.assert_close(output, expected[rank * 2 : rank * 2 + 2], rtol=0, atol=1e-12)
        torch.testing.assert_close(mean, whole.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(var, whole.running_var, rtol=0, atol=1e-12)


class CountingLinear(nn.Linear):
    def __init__(self):
        super().__init__(4, 2)
        self.steps = 0

    def forward(self, x):
        self.steps += int(self.training)
        return super().forward(x)


def train_with_an_unreadable_share_on_rank_1(processes: Processes):
    torch.manual_seed(0)
    model = CountingLinear()
    ddp = nn.parallel.DistributedDataParallel(model)
    good = (torch.randn(2, 4), torch.tensor([0, 1]), 0)
    unreadable = (torch.empty(0, 4), torch.empty(0, dtype=torch.int64), 2)
    middle = unreadable if processes.rank == 1 else good
    lines = []
    trainer = tiny_trainer(ddp, lines, every_process=partial(launch.every_process,
                                                             processes=processes))  # fmt: skip
    trainer.train(1, Batches([good, middle, good]))
    return (
        model.steps,
        model.weight.detach(),
        [line for line in lines if not line.startswith((" | Epoch", "=>"))],
    )


def test_with_skip_corrupt_every_process_takes_the_same_steps(tmp_path):
    (steps0, weight0, lines0), (steps1, weight1, _) = run_ranks(
        train_with_an_unreadable_share_on_rank_1, 2, tmp_path
    )
    assert (steps0, steps1) == (2, 2)
    assert torch.equal(weight0, weight1)
    assert lines0 == [" | skipped 2 unreadable images",
                      " | left out 2 readable images of batches in which another process had none"]  # fmt: skip


def train_a_step_then_share_buffers(processes: Processes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(1 + processes.rank)  # each process its own images
    tiny_trainer(ddp, []).train(1, Batches([(torch.randn(2, 3, 6, 6), torch.tensor([0, 1]))]))
    before = [buffer.clone() for buffer in model.buffers()]
    parallel.share_buffers(model, processes)
    return before, [buffer.clone() for buffer in model.buffers()]


def test_before_validation_every_process_takes_rank_0s_batch_norm_statistics(tmp_path):
    (before0, after0), (before1, after1) = run_ranks(train_a_step_then_share_buffers, 2, tmp_path)
    assert not torch.equal(before0[0], before1[0])  # the running means had drifted apart
    for mine, rank0 in zip(after1, before0, strict=True):
        assert torch.equal(mine, rank0)
    assert all(torch.equal(a, b) for a, b in zip(after0, before0, strict=True))


class Turns:
    """A record of in_turns' calls: work and agreements, with the agreements' answers."""

    def __init__(self, answers=None):
        self.calls, self.answers = [], list(answers or [])

    def work(self):
        self.calls.append("work")
        return "loaders"

    def every_process(self, flag, _processes, waiting=False):
        self.calls.append("agree")
        return self.answers.pop(0) if self.answers else flag


@pytest.mark.parametrize(
    ("rank", "local_rank", "order"),
    [
        (0, 0, ["work", "agree", "agree", "agree"]),  # prepares first
        (4, 0, ["agree", "work", "agree", "agree"]),  # first of another node: second
        (1, 1, ["agree", "agree", "work", "agree"]),  # reads what is prepared
        (5, 1, ["agree", "agree", "work", "agree"]),
    ],
)
def test_one_process_prepares_the_data_before_the_others_read_it(rank, local_rank, order):
    turns = Turns()
    result = parallel.in_turns(Processes(rank, 8, local_rank), turns.work, turns.every_process)
    assert (result, turns.calls) == ("loaders", order)


def test_a_process_that_cannot_load_the_data_ends_every_process():
    def failing():
        raise DataError("cifar10 file missing: x")

    with pytest.raises(DataError, match="file missing"):
        parallel.in_turns(Processes(0, 2, 0), failing, Turns().every_process)
    waiting = Turns(answers=[False])  # rank 0 failed in the first turn
    with pytest.raises(errors.PeerFailed) as failed:
        parallel.in_turns(Processes(1, 2, 1), waiting.work, waiting.every_process)
    assert waiting.calls == ["agree"] and failed.value.rank == 1


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("gpu[07-09,12],cpu1", "gpu07"), ("node5", "node5"), ("a1,b[2-3]", "a1"),
     ("rack[2-3]-n[010-011]", "rack2-n010"), ("[10.0.0.5]", "10.0.0.5")],
)  # fmt: skip
def test_rank_0_runs_on_the_first_host_of_the_slurm_node_list(nodelist, host):
    assert launch.first_host(nodelist) == host


SRUN_TASK_1 = {"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
               "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "123456",
               "SLURM_STEP_NODELIST": "gpu[07-08]"}  # fmt: skip


def test_srun_tasks_are_a_job_of_processes():
    job = launch.job_environment(SRUN_TASK_1)
    assert job == launch.Job(1, 4, 1, "gpu07", 12000 + 123456 % 20000, "srun")
    given = launch.job_environment({**SRUN_TASK_1, "MASTER_ADDR": "head", "MASTER_PORT": "2950"})
    assert (given.address, given.port) == ("head", 2950)
    torchrun = launch.job_environment({**SRUN_TASK_1, "WORLD_SIZE": "2", "RANK": "1",
                                       "TORCHELASTIC_USE_AGENT_STORE": "True",
                                       "MASTER_ADDR": "gpu07", "MASTER_PORT": "29500"})  # fmt: skip
    # srun ... torchrun: torchrun's job, in its agent's store
    assert torchrun == launch.Job(1, 2, 0, "gpu07", 29500, "torchrun", agent_store=True)
    with pytest.raises(launch.StartError, match="TORCHELASTIC_USE_AGENT_STORE=True but"
                                                " MASTER_ADDR is not set"):  # fmt: skip
        launch.job_environment({"WORLD_SIZE": "2", "RANK": "1",
                                "TORCHELASTIC_USE_AGENT_STORE": "True"})  # fmt: skip


def test_a_batch_scripts_own_process_is_alone():
    batch_script = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4",
                    "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "9"}  # fmt: skip
    assert launch.job_environment(batch_script) == launch.Job()
    assert launch.job_environment({**SRUN_TASK_1, "SLURM_STEP_NUM_TASKS": "1"}) == launch.Job()
