"""scripts/benchmark.py runs each kind of measurement (speed itself is not asserted)."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location(
        "benchmark", os.path.join(ROOT, "scripts", "benchmark.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "bare", "layout": "channels_last", "precision": "bf16", "optnet": True},
        {"kind": "trainer", "layout": "contiguous", "precision": "fp32"},
        {"kind": "pipeline"},
        {"kind": "baseline"},
        {"kind": "jpeg_decode"},
        {"kind": "jpeg_pipeline"},
    ],
)
def test_each_measurement_reports_throughput_and_memory(benchmark, spec):
    threads = torch.get_num_threads()
    # "system" leaves this process's allocator alone; "cache" is tested in test_speed_options
    base = {"model": "resnet20", "batch": 4, "warmup": 1, "steps": 2, "allocator": "system"}
    result = benchmark.run_one({**base, **spec})
    assert result["img_s"] > 0 and result["peak_rss_mib"] > 0
    assert torch.get_num_threads() == threads
