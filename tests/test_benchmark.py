"""scripts/benchmark.py runs each kind of measurement (speed itself is not asserted)."""

import os

import pytest
import torch
from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark")


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "bare", "layout": "channels_last", "precision": "bf16", "optnet": True},
        {"kind": "trainer", "layout": "contiguous", "precision": "fp32"},
        {"kind": "pipeline"},
        {"kind": "baseline"},
        {"kind": "jpeg_decode"},
        {"kind": "jpeg_pipeline"},
        {"kind": "reference"},
        {"kind": "pipeline_policy"},
        {"kind": "jpeg_train"},
        {"kind": "jpeg_train_recipe"},
        {"kind": "data_folder"},
        {"kind": "data_shards"},
        {"kind": "data_parquet", "workers": 1},
        {"kind": "data_fetched"},
    ],
)
def test_each_measurement_reports_throughput_and_memory(benchmark, spec):
    threads = torch.get_num_threads()
    # "system" leaves this process's allocator alone; "cache" is tested in test_speed_options
    base = {"model": "resnet20", "batch": 4, "warmup": 1, "steps": 2, "allocator": "system"}
    result = benchmark.run_one({**base, **spec})
    assert result["img_s"] > 0 and result["peak_rss_mib"] > 0
    assert torch.get_num_threads() == threads


def test_rounds_measure_every_row_in_turn_and_report_medians(benchmark, monkeypatch):
    calls = []
    speeds = {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 1.0, 3.0])}

    def fake_measure(spec):
        calls.append(spec["row"])
        return {"img_s": next(speeds[spec["row"]]), "peak_rss_mib": 100.0}

    monkeypatch.setattr(benchmark, "measure", fake_measure)
    results = benchmark.measure_rounds({"a": {"row": "a"}, "b": {"row": "b"}}, 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # drift falls on both rows alike
    assert results["a"] == {"img_s": 20.0, "img_s_range": (10.0, 30.0), "peak_rss_mib": 100.0}
    assert results["b"]["img_s"] == 3.0 and results["b"]["img_s_range"] == (1.0, 5.0)


@pytest.mark.parametrize("name, size", [("resnet18", 224), ("resnext50", 64)])
def test_a_training_step_counts_three_forward_passes_less_the_stems_input_gradient(
    benchmark, name, size
):
    import models

    model, size = benchmark.build(name, size)
    forward_macs = models.complexity(model, size)[1]
    if name == "resnet18":
        assert 1.81e9 < forward_macs < 1.83e9  # ResNet-18's published 1.8 GFLOPs
    stem_macs = 64 * 3 * 7 * 7 * (size // 2) ** 2  # no gradient is taken for the image itself
    flops = benchmark.training_flops_per_image(model, size)
    assert flops == 2 * (3 * forward_macs - stem_macs)  # grouped convolutions counted right
