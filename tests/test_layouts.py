"""-memoryFormat auto on a CPU: the faster layout for this run's network, timed at start on
this machine, said in one line, recorded, and remembered in -gen for the next run."""

import json
import os

import pytest
import torch
from test_cli import small_cifar_args

import models
from run import layouts, plan
from runtime import devices, launch


@pytest.fixture
def auto_plan(cifar10_root, tmp_path):
    """A ResNet-8 CIFAR run's plan with -memoryFormat auto, its -gen in tmp_path."""
    args = [*small_cifar_args(cifar10_root, tmp_path / "run"), "-gen", str(tmp_path / "gen")]
    return plan.make_plan(plan.parse(args))


def cpu_place(auto_plan, world: int = 1) -> launch.Place:
    """Where a process of a job of `world` processes runs on the CPU, in the plan's precision."""
    device = torch.device("cpu")
    dtypes = launch.precision_settings(auto_plan.launch.precision, device)
    return launch.Place(device, [device], dtypes, launch.Processes(0, world), launch.StopRequest())


def network(auto_plan):
    return models.create(**{**auto_plan.model.arch, "nClasses": 10})


def test_a_long_run_times_both_layouts_says_so_and_records_the_faster(auto_plan, capsys):
    model = network(auto_plan)
    decided = layouts.chosen(auto_plan, model, cpu_place(auto_plan), steps=5000)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"=> Memory format: {decided.model.memory_format} (auto: channels_last")
    assert line.endswith("img/s on this CPU, timed now)")
    assert decided.options["memoryFormat"] == decided.model.memory_format
    with open(f"{auto_plan.data.gen}/{layouts.CACHE_NAME}") as handle:
        (key, speeds), *others = json.load(handle).items()
    assert not others and "-netType resnet -depth 8" in key and "batch 32 of 32 x 32" in key
    assert decided.model.memory_format == max(speeds, key=speeds.get)


def test_a_timing_kept_in_gen_decides_the_next_run_without_timing(auto_plan, capsys):
    model = network(auto_plan)
    key = layouts.setting_key(model, auto_plan.model.arch, (32, 3, 32, 32), torch.float32)
    for favoured in layouts.LAYOUTS:  # each answer kept is followed, whatever the rule says
        speeds = {name: 1e9 if name == favoured else 1.0 for name in layouts.LAYOUTS}
        layouts.write_cache(f"{auto_plan.data.gen}/{layouts.CACHE_NAME}", key, speeds)
        decided = layouts.chosen(auto_plan, model, cpu_place(auto_plan), steps=5000)
        assert decided.model.memory_format == favoured
        assert "timed before" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": {"channels_last": -1}}',
                                     '{"k": {"channels_last": "fast", "contiguous": 3}}'])  # fmt: skip
def test_a_damaged_timing_file_counts_as_none(tmp_path, content):
    path = tmp_path / layouts.CACHE_NAME
    path.write_text(content)
    assert layouts.read_cache(str(path)) == {}
    layouts.write_cache(str(path), "k", {"channels_last": 2.0, "contiguous": 1.0})
    assert layouts.read_cache(str(path)) == {"k": {"channels_last": 2.0, "contiguous": 1.0}}


def test_short_runs_and_jobs_of_several_processes_keep_the_rule(auto_plan, capsys):
    model = network(auto_plan)
    rule = auto_plan.model.memory_format
    for world, steps, said in ((1, 999, ", a run too short to time)"), (2, 10**6, ")")):
        decided = layouts.chosen(auto_plan, model, cpu_place(auto_plan, world), steps)
        assert decided is auto_plan and decided.model.memory_format == rule
        line = capsys.readouterr().out
        assert line == f"=> Memory format: {rule} (auto: {auto_plan.launch.layout_rule}{said}\n"
    assert not os.path.exists(auto_plan.data.gen)  # nothing timed, nothing written


def test_timing_leaves_the_random_generators_and_the_model_as_they_were():
    model = models.create("wrn", 10, "cifar10", widenFactor=1, dropout=0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    speeds = layouts.time_layouts(model, (4, 3, 32, 32), (torch.float32, None))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(speeds) == set(layouts.LAYOUTS) and all(layouts.is_speed(v) for v in speeds.values())
    assert devices.MEMORY_FORMATS["channels_last"] == torch.channels_last
