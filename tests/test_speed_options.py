"""Issue 5's numerical checks: layouts, bf16 and compilation change speed, not results."""

import os
import shutil
import subprocess
import sys

import pytest
import runs
import torch
from conftest import TIMEOUT

import main
import models
from run import plan
from runtime import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    ("args", "size"), [(("resnet", 20, "cifar10"), 32), (("resnext", 50, "imagenet"), 64)]
)
def test_channels_last_and_contiguous_give_the_same_logits(args, size):
    torch.manual_seed(0)
    kwargs = {"cardinality": 4, "baseWidth": 4} if args[0] == "resnext" else {}
    model = models.create(*args, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        contiguous = model(x)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, contiguous, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_stays_within_two_percent_of_fp32():
    torch.manual_seed(0)
    model = models.create("resnet", 20, "cifar10").eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(x).float()
    relative = (reduced - reference).norm() / reference.norm()
    assert relative < 0.02


def test_compile_without_a_cpu_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(launch.StartError, match="needs a C\\+\\+ compiler"):
        launch.compile_model(torch.nn.Linear(2, 2), torch.device("cpu"))


def test_compiled_training_matches_eager_and_saves_clean_keys(cifar10_root, tmp_path):
    def run(name, *extra):
        flags = "-dataset cifar10 -netType resnet -depth 8 -batchSize 10 -nEpochs 1 -manualSeed 3"
        command = [sys.executable, os.path.join(ROOT, "main.py"), *flags.split(), *extra,
                   "-data", cifar10_root, "-save", str(tmp_path / name)]  # fmt: skip
        # A process of its own: torch.compile keeps its caches and compile workers in the
        # process that compiled.
        done = subprocess.run(command, capture_output=True, text=True, timeout=2 * TIMEOUT)
        assert done.returncode == 0, done.stderr
        return torch.load(tmp_path / name / "model_1.pth", weights_only=True)["model"]

    compiled = run("compiled", "-compile", "true")
    eager = run("eager")
    assert compiled.keys() == eager.keys()  # no '_orig_mod.' prefixes
    for key in eager:
        if eager[key].is_floating_point():
            torch.testing.assert_close(compiled[key], eager[key], atol=1e-4, rtol=1e-3)


def test_activation_checkpointing_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = models.create("resnext", 29, "cifar10", cardinality=2, baseWidth=4)
    saver = models.create("resnext", 29, "cifar10", cardinality=2, baseWidth=4)
    saver.load_state_dict(plain.state_dict())
    models.set_activation_checkpointing(saver)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for model in (plain, saver):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    for (name, a), b in zip(plain.named_parameters(), saver.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), saver.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # running statistics updated once, as without


def test_optnet_flag_turns_checkpointing_on(cifar10_root, tmp_path):
    flags = "-dataset cifar10 -netType resnet -depth 8 -batchSize 10 -nEpochs 1 -optnet true"
    done = runs.main_run([*flags.split(), "-data", cifar10_root, "-save", tmp_path / "save"])
    assert done.returncode == 0, done.stderr
    assert "=> Recomputing residual blocks in the backward pass" in done.stdout


PAGE_FAULTS_PER_STEP = """
import resource, sys
import torch
sys.path.insert(0, sys.argv[1])
import models
from runtime import launch
print(launch.configure_host_allocator(sys.argv[2]))
torch.manual_seed(0)
model = models.create("resnet", 18, "imagenet").to(memory_format=torch.channels_last)
images = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(images).sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[4:]))
"""


def steady_page_faults(mode: str) -> tuple[str, int]:
    """Whether the mode was applied, and the page faults of steps 5-8 of a training loop."""
    # A process of its own: the allocator setting cannot be undone in this one.
    done = runs.process_run([sys.executable, "-c", PAGE_FAULTS_PER_STEP, ROOT, mode])
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_host_allocator_cache_reuses_activations_without_page_faults():
    # glibc's default returns a step's freed activations to the OS, so the next step
    # faults them in again as fresh pages (about 20,000 faults a step here)
    cached, system = steady_page_faults("cache"), steady_page_faults("system")
    assert (cached[0], system[0]) == ("True", "False")
    assert system[1] > 4 * 2_000
    assert cached[1] * 10 < system[1]


def test_the_host_allocator_is_set_before_any_data_is_loaded(monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def no_loaders(*args):
        calls.append("loaders")
        raise Stop

    monkeypatch.setattr(launch, "configure_host_allocator", lambda mode: calls.append(mode))
    monkeypatch.setattr(main.datasets, "create_loaders", no_loaders)
    parsed = plan.parse(["-dataset", "cifar10", "-nGPU", "0", "-netType", "resnet"])
    with pytest.raises(Stop):
        main.run(plan.make_plan(parsed))
    assert calls == ["cache", "loaders"]
