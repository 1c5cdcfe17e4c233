"""-device auto | cuda | mps | cpu, and the choices made for the machine: which device auto
picks, what a device cannot do (one line at start, nothing written), the memory format
auto picks for a CPU's vector capability, bf16 advice, resume across devices."""

import json
import re

import pytest
import torch
from test_cli import run_main, small_cifar_args

from run import plan
from runtime import devices

CUDA = devices.Machine(cuda=True, mps=False, cpu_capability="AVX512", cpu_bf16=True, cuda_bf16=True)
VOLTA = devices.Machine(
    cuda=True, mps=False, cpu_capability="AVX2", cpu_bf16=False, cuda_bf16=False
)
MAC = devices.Machine(cuda=False, mps=True, cpu_capability="DEFAULT", cpu_bf16=False)
ZEN3 = devices.Machine(cuda=False, mps=False, cpu_capability="AVX2", cpu_bf16=False)
XEON = devices.Machine(cuda=False, mps=False, cpu_capability="AVX512", cpu_bf16=True)


@pytest.mark.parametrize(
    ("machine", "n_gpu", "expected"),
    [(CUDA, 1, "cuda"), (CUDA, 8, "cuda"), (CUDA, 0, "cpu"), (MAC, 1, "mps"), (MAC, 0, "cpu"),
     (ZEN3, 1, "cpu"), (XEON, 4, "cpu")],
)  # fmt: skip
def test_auto_takes_cuda_then_mps_then_the_cpu_and_ngpu_0_is_the_cpu(machine, n_gpu, expected):
    assert devices.device_type("auto", n_gpu, machine) == expected


@pytest.mark.parametrize(
    ("requested", "n_gpu", "machine", "says"),
    [
        ("cuda", 1, MAC, "-device cuda but torch sees no CUDA device"),
        ("mps", 1, CUDA, "-device mps but torch sees no MPS device"),
        ("cuda", 0, CUDA, "-device cuda with -nGPU 0 (the CPU): drop one of them"),
        ("mps", 2, MAC, "-nGPU 2 needs CUDA GPUs (DataParallel); MPS is one device"),
        ("auto", 8, MAC, "-nGPU 8 needs CUDA GPUs (DataParallel); MPS is one device"),
        (
            "cpu",
            2,
            CUDA,
            "-nGPU 2 with -device cpu: the CPU is one device (it uses all its"
            " cores); drop -nGPU, or use -device cuda",
        ),
    ],
)
def test_a_device_that_is_absent_or_cannot_do_it_is_refused(requested, n_gpu, machine, says):
    with pytest.raises(devices.DeviceError, match=f"^{re.escape(says)}"):
        devices.device_type(requested, n_gpu, machine)


def test_auto_says_when_it_runs_without_cuda():
    assert devices.fallback_line("cpu", 1) == "=> No CUDA device found: running on the CPU"
    assert "running on MPS" in devices.fallback_line("mps", 1)
    assert devices.fallback_line("cpu", 0) is None  # -nGPU 0 asked for the CPU
    assert devices.fallback_line("cuda", 4) is None


def test_a_job_of_several_processes_cannot_run_on_mps():
    with pytest.raises(devices.DeviceError, match="a job of 2 processes cannot run on MPS"):
        devices.check_job("mps", 2)
    devices.check_job("mps", 1)
    devices.check_job("cpu", 4)
    assert (devices.backend("cuda"), devices.backend("cpu")) == ("nccl", "gloo")


@pytest.mark.parametrize("device", ["mps", "cuda"])
def test_an_absent_device_is_one_line_exit_2_and_nothing_written(device, cifar10_root, tmp_path):
    """This machine has neither CUDA nor MPS."""
    done = run_main(*small_cifar_args(cifar10_root, tmp_path / "save"), "-device", device)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: -device {device} but torch sees no")
    assert not (tmp_path / "save").exists()


def test_several_gpus_on_the_cpu_are_refused_not_ignored(cifar10_root, tmp_path):
    done = run_main(*small_cifar_args(cifar10_root, tmp_path / "save"), "-device", "cpu",
                    "-nGPU", "2")  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: -nGPU 2 with -device cpu")
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize(
    ("requested", "kind", "machine", "expected"),
    [
        ("auto", "cpu", ZEN3, ("contiguous", "this CPU has AVX2, no AVX-512")),
        ("auto", "cpu", XEON, ("channels_last", "this CPU has AVX512")),
        ("auto", "cuda", CUDA, ("channels_last", "on CUDA")),
        ("auto", "mps", MAC, ("channels_last", "on MPS")),
        ("channels_last", "cpu", ZEN3, ("channels_last", None)),  # the user's choice wins
        ("contiguous", "cpu", XEON, ("contiguous", None)),
    ],
)
def test_auto_memory_format_follows_the_cpus_vector_units(requested, kind, machine, expected):
    assert devices.memory_format(requested, kind, machine) == expected


def test_the_plan_keeps_the_rule_until_auto_is_decided(cifar10_root, tmp_path):
    parsed = plan.parse(small_cifar_args(cifar10_root, tmp_path))
    chosen = plan.make_plan(parsed, machine=ZEN3)
    assert chosen.launch.device == "cpu" and chosen.model.memory_format == "contiguous"
    assert chosen.launch.layout_rule == "this CPU has AVX2, no AVX-512"  # said once decided
    assert (chosen.options["device"], chosen.options["memoryFormat"]) == ("cpu", "contiguous")
    given = plan.parse([*small_cifar_args(cifar10_root, tmp_path), "-memoryFormat", "contiguous"])
    assert plan.make_plan(given, XEON).launch.layout_rule is None


@pytest.mark.parametrize(
    ("requested", "kind", "machine", "expected"),
    [
        ("auto", "cpu", XEON, ("bf16", "this CPU computes bf16 natively")),
        ("auto", "cpu", ZEN3, ("single", "this CPU has no native bf16")),
        ("auto", "cuda", CUDA, ("bf16", "this GPU computes bf16 natively")),
        ("auto", "cuda", VOLTA, ("single", "this GPU has no native bf16")),
        ("auto", "mps", MAC, ("single", "bf16 on MPS is not chosen for you")),
        ("half", "cuda", VOLTA, ("half", None)),  # the user's choice wins
        ("single", "cpu", XEON, ("single", None)),
    ],
)
def test_auto_precision_is_bf16_where_the_device_computes_it_natively(
    requested, kind, machine, expected
):
    assert devices.precision(requested, kind, machine) == expected


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16"), ((7, 0), "single")])
def test_auto_precision_asks_this_processs_gpu_only_when_needed(capability, expected, monkeypatch):
    asked = []
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda i: asked.append(i) or capability
    )
    machine = devices.Machine(cuda=True, mps=False, cpu_capability="AVX2", cpu_bf16=False)
    assert devices.precision("single", "cuda", machine) == ("single", None) and asked == []
    assert devices.precision("auto", "cuda", machine)[0] == expected and asked == [3]


def test_auto_precision_is_said_recorded_and_trains_what_its_choice_trains(cifar10_root, tmp_path):
    parsed = plan.parse([*small_cifar_args(cifar10_root, tmp_path), "-precision", "auto"])
    chosen = plan.make_plan(parsed, machine=XEON)
    assert chosen.launch.precision == "bf16"
    assert chosen.options["precision"] == "bf16"
    assert "=> Precision: bf16 (auto: this CPU computes bf16 natively)" in chosen.notes
    here = devices.precision("auto", "cpu", devices.Machine.here())[0]
    weights = []
    for name, value in (("auto", "auto"), ("given", here)):
        argv = small_cifar_args(cifar10_root, tmp_path / name, "-nEpochs 1 -batchSize 10")
        done = run_main(*argv, "-precision", value, "-device", "cpu")
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / name / "opts.json").read_text())["precision"] == here
        weights.append(torch.load(tmp_path / name / "model_1.pth", weights_only=True)["model"])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_bf16_advice_warns_where_emulated_and_offers_where_native():
    assert "emulated here and 8-12x slower" in devices.precision_advice("bf16", "cpu", ZEN3)
    assert "bf16 natively" in devices.precision_advice("single", "cpu", XEON)
    assert devices.precision_advice("bf16", "cpu", XEON) is None  # asked for, and native
    assert devices.precision_advice("single", "cpu", ZEN3) is None
    assert devices.precision_advice("bf16", "cuda", CUDA) is None


def test_device_cpu_trains_what_ngpu_0_trains_and_opts_json_records_it(cifar10_root, tmp_path):
    weights = []
    for name, flags in (("lua", ["-nGPU", "0"]), ("device", ["-device", "cpu"])):
        argv = small_cifar_args(cifar10_root, tmp_path / name, "-nEpochs 1 -batchSize 10")
        done = run_main(*argv, *flags, "-memoryFormat", "contiguous")
        assert done.returncode == 0, done.stderr
        weights.append(torch.load(tmp_path / name / "model_1.pth", weights_only=True)["model"])
        recorded = json.loads((tmp_path / name / "opts.json").read_text())
        assert (recorded["device"], recorded["memoryFormat"]) == ("cpu", "contiguous")
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_a_checkpoint_saved_on_gpus_resumes_on_the_cpu_bitwise(cifar10_root, tmp_path):
    """The CUDA generators a GPU run saved are left aside on the CPU; the CPU's, which
    draw the data, are restored: the resumed run trains what an uninterrupted one does."""
    flags = "-nEpochs 2 -batchSize 10 -manualSeed 3"
    whole = run_main(*small_cifar_args(cifar10_root, tmp_path / "whole", flags))
    assert whole.returncode == 0, whole.stderr
    argv = small_cifar_args(cifar10_root, tmp_path / "gpu", flags.replace("2", "1", 1))
    assert run_main(*argv).returncode == 0
    latest = tmp_path / "gpu" / "latest.pth"
    record = torch.load(latest, weights_only=True)
    record["state"]["rng"][0]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2  # 2 GPUs' worth
    torch.save(record, latest)
    resumed = run_main(*small_cifar_args(cifar10_root, tmp_path / "gpu", flags),
                       "-resume", tmp_path / "gpu")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "whole" / "model_2.pth", weights_only=True)["model"]
    got = torch.load(tmp_path / "gpu" / "model_2.pth", weights_only=True)["model"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_mps_generators_are_saved_and_restored_on_mps(monkeypatch):
    state = {"mps": torch.arange(4, dtype=torch.uint8)}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["mps"])
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda value: state.update(restored=value))
    saved = devices.rng_state([torch.device("mps")])
    assert torch.equal(saved["mps"], state["mps"])
    devices.restore_rng_state(saved, 0, [torch.device("mps")])
    assert torch.equal(state["restored"], state["mps"])
    devices.restore_rng_state(saved, 0, [torch.device("cpu")])  # on the CPU: left aside
    assert devices.pins_memory(torch.device("cuda")) and not devices.pins_memory(
        torch.device("mps")
    )


def test_the_machine_here_is_what_torch_reports():
    here = devices.Machine.here()
    assert here.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert here.cuda == torch.cuda.is_available()
    assert isinstance(here.mps, bool) and isinstance(here.cpu_bf16, bool)


def test_a_timing_waits_for_the_devices_queued_work(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    for device in ("cuda", "mps", "cpu", torch.device("cuda", 1)):
        devices.synchronize(device)
    assert waited == ["cuda", "mps", "cuda"]  # the CPU's work is done when the call returns
