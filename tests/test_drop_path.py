"""-dropPath (stochastic depth per residual block) and -headDropout (before the classifier):
rates as timm sets them, no weights added, the same network in evaluation, a different
training pass when on, refused outside [0, 1)."""

import pytest
import runs
import timm
import torch
from test_cli import small_cifar_args

import models
import opts as options
from run import plan


def block_rates(model) -> list[float]:
    """Each residual block's stochastic depth rate, 0 where it has none (ours and timm's)."""
    rates = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(model, name, ()):
            drop = getattr(block, "drop_path", None)
            rates.append(float(getattr(drop, "p", getattr(drop, "drop_prob", 0.0))))
    return rates


def test_the_rates_rise_with_depth_as_timms_resnet():
    ours = models.create("resnet", 50, "imagenet")
    models.set_drop_path(ours, 0.1)
    theirs = timm.create_model("resnet50", drop_path_rate=0.1)
    assert block_rates(ours) == pytest.approx(block_rates(theirs), abs=1e-12)
    assert block_rates(ours)[0] == 0 and block_rates(ours)[-1] == pytest.approx(0.1)


NETWORKS = [
    ("resnet", 8, "cifar10", {}, 32),
    ("preresnet", 20, "cifar10", {}, 32),
    ("resnext", 29, "cifar10", {"cardinality": 2, "baseWidth": 4}, 32),
    (
        "resnext",
        29,
        "cifar10",
        {"cardinality": 2, "baseWidth": 4, "bottleneckType": "resnext_B"},
        32,
    ),  # fmt: skip
    ("wrn", 10, "cifar10", {}, 32),
    ("resnest", 14, "imagenet", {}, 64),
]


@pytest.mark.parametrize(("net", "depth", "dataset", "extra", "side"), NETWORKS)
def test_on_it_adds_no_weights_evaluates_the_same_and_trains_differently(
    net, depth, dataset, extra, side
):
    torch.manual_seed(0)
    plain = models.create(net, depth, dataset, **extra)
    dropped = models.create(net, depth, dataset, **extra)
    dropped.load_state_dict(plain.state_dict())
    models.set_drop_path(dropped, 0.5)
    models.set_head_dropout(dropped, 0.5)
    assert dropped.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(4, 3, side, side)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(images), dropped(images))
    plain.train(), dropped.train()
    torch.manual_seed(1)
    trained = dropped(images)
    assert not torch.allclose(plain(images), trained)
    models.set_drop_path(dropped, 0.0)  # off: the plain network's training pass again
    models.set_head_dropout(dropped, 0.0)
    assert torch.equal(plain(images), dropped(images))


def test_a_run_with_both_trains_and_saves_the_plain_networks_weights(cifar10_root, tmp_path):
    done = runs.main_run(small_cifar_args(cifar10_root, tmp_path / "on",
                                          "-nEpochs 1 -batchSize 4 -dropPath 0.2 -headDropout 0.3"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / "on" / "model_1.pth", weights_only=True)["model"]
    assert saved.keys() == models.create("resnet", 8, "cifar10").state_dict().keys()


@pytest.mark.parametrize("flag", ["-dropPath", "-headDropout"])
def test_rates_outside_zero_to_one_are_refused(flag):
    with pytest.raises(options.UsageError, match=f"{flag} must be in \\[0, 1\\), got 1.0"):
        plan.parse(["-dataset", "cifar10", flag, "1"])
