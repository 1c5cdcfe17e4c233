"""scripts/benchmark.py runs each kind of measurement, and prints the ratios it promises
from the rows it measured (speed itself is not asserted: a test's machine is busy)."""

import os
import re

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


def test_the_ratios_printed_are_those_of_the_rows_measured(benchmark, monkeypatch, capsys):
    measured = []

    def fake_measure(spec):  # a distinct speed per row, so that a wrong row shows
        measured.append(spec)
        img_s = {"bare": 100.0, "trainer": 97.0, "baseline": 50.0, "reference": 400.0}
        speed = img_s.get(spec["kind"], 1000.0) * (1.5 if spec.get("precision") == "bf16" else 1)
        speed *= 0.8 if spec.get("layout") == "contiguous" else 1.0
        speed *= 0.9 if spec.get("allocator") == "system" else 1.0
        rss = 70.0 if spec.get("optnet") else 100.0
        return {"img_s": speed, "peak_rss_mib": rss}

    monkeypatch.setattr(benchmark, "measure", fake_measure)
    monkeypatch.setattr(benchmark.layouts, "time_layouts", lambda *_: {"channels_last": 2.0,
                                                                      "contiguous": 1.0})  # fmt: skip
    benchmark.main(["--model", "resnet20", "--rounds", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(measured) == 2 * 12  # every row in each round
    ratios = {m[1]: (float(m[2]), m[3]) for line in lines
              if (m := re.fullmatch(r"(.+): (\d+\.\d\d)x \(target >= ([\d.]+)\)", line))}  # fmt: skip
    assert ratios == {
        "trainer / bare, same flags": (0.97, "0.95"),
        "default flags / the faster bare fp32 layout": (0.97, "0.95"),
        "default flags / bare fp32 NCHW": (round(97 / 80, 2), "1.3"),
        "default flags / baseline": (1.94, "1.3"),
        "-precision bf16 / baseline": (round(97 * 1.5 / 50, 2), "2"),
        "JPEG pipeline / decode alone": (1.0, "0.6"),
    }
    assert "-optnet peak RSS: 70 / 100 MiB, a 30% cut (target >= 30% for ResNeXt-50 at 224)," \
           " at 1.00x the speed" in lines  # fmt: skip
    assert "-hostAllocator cache / system: 1.11x" in lines
    assert lines[0].startswith("CPU capability ") and "| configuration | img/s |" in lines[2]
