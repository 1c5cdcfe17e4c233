"""-memoryFormat auto on a CPU: channels_last or contiguous (NCHW), whichever trains this run's
network faster on this machine, timed for a few steps at start and remembered in -gen.

Which layout is faster depends on the CPU, the network, the image size, the batch and the
precision, and no rule by CPU family holds (two AMD Zen 3 machines measured opposite
answers for ResNet-20), so the run measures it: a training step (forward and backward) of
two copies of the network, warmed up, then timed in turns. The answer is kept in
-gen/memory_formats.json under the CPU, its threads, torch, the network and the step's
shape, so that the next run on this machine with the same setting starts at once.
"""

import contextlib
import copy
import json
import math
import os
import statistics
import time
from dataclasses import replace
from types import MappingProxyType

import torch
from torch import nn
from torch.nn import functional as F

import checkpoints
import models
from runtime import devices, launch

CACHE_NAME = "memory_formats.json"
LAYOUTS = ("channels_last", "contiguous")
MIN_STEPS = 1000  # a shorter run keeps the rule: timing would cost more than it saves
MAX_BATCH = 32  # a share of a large batch times the same layouts in fewer seconds
ROUNDS = 5  # timed rounds of each layout, in turns, after a warm-up step each
ROUND_SECONDS = 0.2  # a round repeats a short step for about this long


def chosen(plan, model: nn.Module, place: launch.Place, steps: int):
    """The plan with -memoryFormat auto decided for this run of `steps` training steps in
    the process's place (its device, dtypes and processes), and a line that says how: by
    timing on a CPU (or from an earlier timing); the rule on other devices, for a job of
    several processes (whose choices must agree) and for a run too short to be worth
    seconds of timing."""
    why = plan.launch.layout_rule
    if why is None:  # given
        return plan
    device, world = place.device, place.processes.world
    if world > 1 or device.type != "cpu" or steps < MIN_STEPS:
        short = ", a run too short to time" if device.type == "cpu" and world == 1 else ""
        print(f"=> Memory format: {plan.model.memory_format} (auto: {why}{short})")
        return plan
    side = plan.data.input_side()
    batch = max(1, min(plan.data.batch_size, MAX_BATCH))
    dtypes = place.dtypes
    key = setting_key(model, plan.model.arch, (batch, 3, side, side), dtypes[1] or dtypes[0])
    path = os.path.join(plan.data.gen, CACHE_NAME)
    speeds = read_cache(path).get(key)
    if speeds is None:
        speeds = time_layouts(model, (batch, 3, side, side), dtypes)
        write_cache(path, key, speeds)
        how = "timed now"
    else:
        how = f"timed before, {path}"
    layout = max(LAYOUTS, key=lambda name: speeds[name])
    rates = ", ".join(f"{name} {speeds[name]:,.0f} img/s" for name in LAYOUTS)
    print(f"=> Memory format: {layout} (auto: {rates} on this CPU, {how})")
    options = MappingProxyType({**plan.options, "memoryFormat": layout})
    return replace(plan, model=replace(plan.model, memory_format=layout), options=options)


def setting_key(model: nn.Module, arch, shape: tuple, dtype: torch.dtype) -> str:
    """What the timing depends on, as one line: CPU, threads, torch, network, step."""
    parameters = sum(p.numel() for p in model.parameters())
    network = models.arch_flags({**models.full_arch(arch), **arch})
    return (
        f"{devices.cpu_model()} ({torch.backends.cpu.get_cpu_capability()},"
        f" {torch.get_num_threads()} threads), torch {torch.__version__}: {network}"
        f" ({parameters:,} parameters), batch {shape[0]} of {shape[2]} x {shape[3]},"
        f" {str(dtype).removeprefix('torch.')}"
    )


def time_layouts(model: nn.Module, shape: tuple, dtypes: tuple) -> dict[str, float]:
    """Images per second of a training step in each layout (the median of the rounds), on
    copies of the model, leaving the random generators as they were."""
    dtype, autocast_dtype = dtypes
    with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(shape, generator=generator).to(dtype)
        labels = torch.randint(0, model.fc.out_features, shape[:1], generator=generator)
        steps = {}
        for name in LAYOUTS:
            layout = devices.MEMORY_FORMATS[name]
            copied = copy.deepcopy(model).to(dtype=dtype, memory_format=layout).train()
            steps[name] = training_step(copied, images.contiguous(memory_format=layout), labels,
                                        autocast_dtype)  # fmt: skip
            steps[name]()  # warm-up: the first step allocates and picks kernels
        one_step = seconds_of(steps[LAYOUTS[0]], 1)
        repeats = max(1, int(ROUND_SECONDS / one_step))  # a round of short steps lasts long
        rounds = ROUNDS if one_step < ROUND_SECONDS * 5 else 2  # enough to measure
        seconds = {name: [] for name in LAYOUTS}
        for _ in range(rounds):
            for name in LAYOUTS:
                seconds[name].append(seconds_of(steps[name], repeats) / repeats)
    return {name: shape[0] / statistics.median(values) for name, values in seconds.items()}


def seconds_of(step, repeats: int) -> float:
    """Wall seconds of `repeats` calls of step."""
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return time.perf_counter() - start


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast_dtype):
    """A forward and backward pass of the batch, at the run's precision."""

    def step() -> None:
        with torch.autocast("cpu", autocast_dtype or torch.bfloat16, enabled=bool(autocast_dtype)):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def read_cache(path: str) -> dict:
    """The timings kept in path: {key: {layout: img/s}}; what is not such a table (a file
    damaged or of another version) counts as none."""
    try:
        with open(path) as handle:
            table = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {
        key: speeds
        for key, speeds in table.items()
        if isinstance(speeds, dict) and all(is_speed(speeds.get(name)) for name in LAYOUTS)
    }


def is_speed(value) -> bool:
    """A positive, finite number of images per second."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def write_cache(path: str, key: str, speeds: dict[str, float]) -> None:
    """Add one timing to path, replacing the file whole; a -gen that cannot be written only
    means the next run times again."""
    table = {**read_cache(path), key: {name: round(speeds[name], 1) for name in LAYOUTS}}
    text = json.dumps(table, indent=1, sort_keys=True).encode()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        checkpoints.atomic_write(path, lambda stream: stream.write(text))
