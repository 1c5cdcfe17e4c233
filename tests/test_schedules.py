"""recipe/schedules.py: the Lua's rules, and step / cosine / warm-up against torch.optim.lr_scheduler
stepped once per iteration."""

import pytest
import torch

from recipe import schedules


@pytest.mark.parametrize(
    ("epoch", "lr"),
    [
        (1, 0.1),
        (30, 0.1),
        (31, 0.01),
        (60, 0.01),
        (61, 0.001),
        (90, 0.001),
        (91, 1e-4),
        (100, 1e-4),
    ],
)
def test_imagenet_lr_drops_every_30_epochs(epoch, lr):
    assert schedules.step_lr(epoch, 0.1) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(
    ("epoch", "lr"), [(1, 0.1), (80, 0.1), (81, 0.01), (121, 0.01), (122, 0.001), (164, 0.001)]
)
def test_fb_cifar_lr_drops_at_81_and_122(epoch, lr):
    assert schedules.milestone_lr(epoch, 0.1) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize(
    ("n_epochs", "first_drop", "second_drop"),
    [(300, 148, 223), (164, 81, 122), (100, 50, 75), (200, 99, 149)],
)
def test_resnext_cifar_lr_drops_at_the_lua_boundaries(n_epochs, first_drop, second_drop):
    lrs = {e: schedules.relative_lr(e, 0.1, n_epochs) for e in range(1, n_epochs + 1)}
    assert lrs[first_drop - 1] == pytest.approx(0.1) and lrs[first_drop] == pytest.approx(0.01)
    assert lrs[second_drop - 1] == pytest.approx(0.01) and lrs[second_drop] == pytest.approx(0.001)
    assert lrs[n_epochs] == pytest.approx(0.001)


def torch_rates(make_scheduler, iterations: int, base_lr: float = 0.5) -> list[float]:
    """The LR of each iteration of a torch scheduler stepped after every iteration."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(iterations):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def our_rates(lr_at, n_epochs: int, per_epoch: int) -> list[float]:
    return [lr_at(e, n / per_epoch) for e in range(1, n_epochs + 1) for n in range(per_epoch)]


@pytest.mark.parametrize(("warmup", "min_lr"), [(0, 0.0), (2, 0.0), (3, 1e-3)])
def test_cosine_with_warmup_equals_torch_linear_then_cosine_per_iteration(warmup, min_lr):
    n_epochs, per_epoch, start = 10, 7, 0.01
    lr_at = schedules.schedule("cosine", 0.5, n_epochs, lua=None, min_lr=min_lr,
                               warmup_from=(warmup, start))  # fmt: skip
    total, warm = n_epochs * per_epoch, warmup * per_epoch

    def torch_scheduler(optimizer):
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total - warm, eta_min=min_lr
        )
        if not warm:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start, 1.0, total_iters=warm)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], [warm])

    expected = torch_rates(torch_scheduler, total)
    assert our_rates(lr_at, n_epochs, per_epoch) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lr_at(1, 0.0) == pytest.approx(0.5 * (start if warmup else 1.0))


def test_step_schedule_equals_torch_multistep_per_epoch():
    lr_at = schedules.schedule("step", 0.5, 12, lua=None, steps=(4, 9), gamma=0.2)
    expected = torch_rates(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 8], gamma=0.2), 12
    )
    assert [lr_at(e, 0.5) for e in range(1, 13)] == pytest.approx(expected, rel=1e-12)


def test_the_lua_schedule_is_unchanged_and_warms_up_as_a_factor():
    rule = schedules.lua_rule("imagenet", "resnext", 0.1, 100)
    plain = schedules.schedule("lua", 0.1, 100, lua=rule)
    assert [plain(e, p) for e in (1, 30, 31, 61) for p in (0.0, 0.5)] == [
        0.1, 0.1, 0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1**2, 0.1 * 0.1**2]  # fmt: skip
    warmed = schedules.schedule("lua", 0.1, 100, lua=rule, warmup_from=(2, 0.1))
    assert warmed(1, 0.0) == pytest.approx(0.01)
    assert warmed(2, 0.0) == pytest.approx(0.1 * (0.1 + 0.9 / 2))
    assert warmed(3, 0.0) == 0.1


def test_each_dataset_gets_its_lua_rule():
    assert schedules.lua_rule("imagenet", "resnet", 0.1, 90)(31) == pytest.approx(0.01)
    assert schedules.lua_rule("cifar10", "resnet", 0.1, 164)(81) == pytest.approx(0.01)
    assert schedules.lua_rule("cifar10", "resnext", 0.1, 300)(148) == pytest.approx(0.01)
    assert schedules.lua_rule("fashionmnist", "resnet", 0.1, 10)(5) == pytest.approx(0.01)
