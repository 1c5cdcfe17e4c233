"""A short run's weights equal those the code gave before a restructuring of how a run is
assembled: the same flags must build the same run (data order, augmentation draws, model,
optimizer, schedule, loss, averaging), whatever file builds each part.

The reference (tests/expected/same_weights.json) holds, per tensor of the model file, its
optimizer state and its averaged weights, the float64 sum and sum of squares after a
two-epoch run in double precision. Double precision keeps a CPU's own summation order
nearly out of the comparison: on one machine the figures repeat exactly, and CPUs of other
vector units (AVX2 against AVX-512) round differently, which two epochs grow to relative
differences near 2e-7 (measured on a Zen 3 against the Zen 4 the reference was written on).
Any change of behaviour moves them by far more (a changed seed: most beyond 1e-3).
To write it anew after a change that is meant to alter training, run this file with
SAME_WEIGHTS_WRITE=1 and say why in the commit."""

import json
import os

import pytest
import torch
from runs import main_run
from test_cli import small_cifar_args

REFERENCE = os.path.join(os.path.dirname(__file__), "expected", "same_weights.json")

# Every part a restructuring moves: erasing, mixup, label smoothing, nesterov, warm-up,
# cosine, weight decay, EMA.
FLAGS = (
    "-nEpochs {epochs} -batchSize 4 -precision double -manualSeed 3 -LR 0.05 -nesterov true"
    " -lrSchedule cosine -warmupEpochs 1 -weightDecay 5e-4 -labelSmoothing 0.1 -mixup 0.2"
    " -randomErasing 0.5 -erasingStyle paper -ema 0.9"
)


def fingerprint(folder) -> dict:
    """{file/tensor: [sum, sum of squares]} of the last epoch's model and optimizer files."""
    prints = {}
    for name in ("model_2.pth", "optimState_2.pth"):
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        for key, value in flattened(state).items():
            if torch.is_tensor(value) and value.is_floating_point():
                value = value.double()
                prints[f"{name}/{key}"] = [value.sum().item(), value.square().sum().item()]
    return prints


def flattened(state, prefix="") -> dict:
    """Nested dicts and lists as one {dotted.key: leaf} dict."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {prefix: state}
    out = {}
    for key, value in items:
        out.update(flattened(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@pytest.fixture(scope="module")
def two_epoch_prints(cifar10_root, tmp_path_factory) -> dict:
    """The fingerprint of a two-epoch run."""
    save = tmp_path_factory.mktemp("same")
    result = main_run(small_cifar_args(cifar10_root, save, FLAGS.format(epochs=2)))
    assert result.returncode == 0, result.stderr
    prints = fingerprint(save)
    if os.environ.get("SAME_WEIGHTS_WRITE"):
        with open(REFERENCE, "w") as handle:
            json.dump({"flags": FLAGS, "prints": prints}, handle, indent=0, sort_keys=True)
    return prints


def test_a_short_run_trains_the_weights_it_trained_before(two_epoch_prints):
    with open(REFERENCE) as handle:
        reference = json.load(handle)
    assert reference["flags"] == FLAGS
    assert sorted(two_epoch_prints) == sorted(reference["prints"])
    for key, (total, squares) in reference["prints"].items():
        ours, norm = two_epoch_prints[key], squares**0.5
        # A sum can cancel to near 0 (a classifier's bias): its rounding scales with the norm.
        assert ours[1] == pytest.approx(squares, rel=1e-6), key
        assert ours[0] == pytest.approx(total, rel=1e-6, abs=1e-4 * norm), key


def test_the_fingerprint_tells_a_changed_run_apart(cifar10_root, tmp_path, two_epoch_prints):
    changed = FLAGS.format(epochs=2).replace("-manualSeed 3", "-manualSeed 4")
    result = main_run(small_cifar_args(cifar10_root, tmp_path, changed))
    assert result.returncode == 0, result.stderr
    prints = fingerprint(tmp_path)
    moved = [k for k in prints if prints[k][1] != pytest.approx(two_epoch_prints[k][1], rel=1e-3)]
    assert len(moved) > len(prints) // 2
