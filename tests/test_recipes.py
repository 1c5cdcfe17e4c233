"""The modern recipe's options, each against the library it comes from: MixUp / CutMix
against torchvision.transforms.v2 on the same draws, the EMA against a hand loop, gradient
clipping against clip_grad_norm_, weight-decay groups against torchvision's rule; and the
defaults against the Lua's plain loop, bitwise."""

import copy
import json
import os
import re
import sys

import pytest
import runs
import torch
from conftest import ROOT
from torch import nn
from torchvision.transforms import v2
from trainers import cpu_trainer

import main
import models
import opts as options
import recipe
import train
from datasets.mixing import BatchMixing
from recipe import averaging, optimizers, schedules
from run import plan

CIFAR = ["-dataset", "cifar10", "-netType", "resnet", "-depth", "8", "-nGPU", "0"]


def batch(seed=0, size=6, classes=10):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 3, 8, 8, generator=generator)
    return images, torch.randint(0, classes, (size,), generator=generator)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_gives_torchvisions_images_and_targets_on_the_same_draws(mixup, cutmix):
    images, labels = batch()
    mixer = BatchMixing(10, mixup=mixup, cutmix=cutmix, seed=3)
    ours = [mixer(images, labels, epoch=2, iteration=i) for i in range(1, 9)]
    choices = [v2.MixUp(alpha=mixup, num_classes=10)] if mixup else []
    choices += [v2.CutMix(alpha=cutmix, num_classes=10)] if cutmix else []
    reference = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
    for i, (mixed, targets) in enumerate(ours, 1):
        torch.manual_seed(mixer.seed_of(2, i))
        expected_images, expected_targets = reference(images, labels)
        assert torch.equal(mixed, expected_images) and torch.equal(targets, expected_targets)
        assert torch.allclose(targets.sum(1), torch.ones(6))
    assert len({round(float(t.max()), 6) for _, t in ours}) > 1  # each iteration draws anew


def test_mixing_repeats_on_resume_leaves_the_global_generator_and_agrees_across_processes():
    images, labels = batch(size=8)
    state = torch.get_rng_state()
    first = BatchMixing(10, mixup=0.4, seed=1)(images, labels, 3, 5)
    again = BatchMixing(10, mixup=0.4, seed=1)(images, labels, 3, 5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # Two processes mix their halves of a global batch with the same lambda.
    halves = [BatchMixing(10, mixup=0.4, seed=1)(images[s], labels[s], 3, 5)
              for s in (slice(0, 4), slice(4, 8))]  # fmt: skip
    lambdas = set()
    for part, (_, targets) in zip((labels[:4], labels[4:]), halves, strict=True):
        differs = part != part.roll(1)  # the image mixed in is of another class
        own = targets[torch.arange(4), part][differs]
        lambdas |= {round(float(value), 6) for value in own}
    assert len(lambdas) == 1


def test_mixed_batches_train_on_soft_targets_and_score_the_dominant_class():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    before = copy.deepcopy(model)
    seen = []

    def criterion(output, target):
        seen.append(target)
        return nn.functional.cross_entropy(output, target)

    mixer = BatchMixing(10, mixup=1.0, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = cpu_trainer(model, optimizer, lambda *_: 0.1, criterion=criterion, mix=mixer)
    images, labels = batch(size=6)
    trainer.train(1, [(images, labels)])
    mixed, targets = mixer(images, labels, 1, 1)
    assert torch.equal(seen[0], targets)  # the loss got the mixed one-hot targets
    with torch.no_grad():
        expected = train.count_wrong(before(mixed), targets.argmax(1))
    assert trainer.sums.total[:2] == expected.tolist()


def test_the_ema_equals_a_hand_loop_over_ten_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, every = 0.9, 2
    average = averaging.ExponentialAverage(model, decay, every)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = None
    for step in range(1, 11):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        average.after_step(epoch=1, iteration=step)
        if step % every == 0:
            current = {k: v.clone().float() for k, v in model.state_dict().items()}
            if expected is None:
                expected = current
            else:
                expected = {k: decay**every * expected[k] + (1 - decay**every) * current[k]
                            for k in current}  # fmt: skip
    averaged = average.module.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)
    assert not torch.equal(averaged["0.weight"], model[0].weight)
    assert average.state_dict()["updates"] == 5


def test_during_warmup_epochs_the_ema_follows_the_weights_then_averages():
    model = nn.Linear(4, 3)
    average = averaging.ExponentialAverage(model, 0.5, warmup=1)
    followed = []
    for epoch, iteration in ((1, 1), (1, 2), (2, 1), (2, 2)):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.after_step(epoch, iteration)
        followed.append(torch.equal(average.module.weight, model.weight))
    # The first update after the warm-up starts the average from the weights.
    assert followed == [True, True, True, False]


def test_the_trainer_evaluates_the_average_and_restores_it_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    average = averaging.ExponentialAverage(model, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    trainer = cpu_trainer(model, optimizer, lambda *_: 0.1, average=average)
    trainer.train(1, [batch(i) for i in range(3)])
    assert trainer.evaluation.evaluated_model() is average.module
    restored = averaging.ExponentialAverage(copy.deepcopy(model), 0.9)
    restored.load_state_dict(average.state_dict())
    for key, value in average.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[key], value)
    assert int(restored.averaged.n_averaged) == 3


def test_gradient_clipping_equals_clip_grad_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    reference = copy.deepcopy(model)
    images, labels = batch()
    optimizer = torch.optim.SGD(model.parameters(), 1.0)
    trainer = cpu_trainer(model, optimizer, lambda *_: 1.0, clip_grad_norm=0.01)
    trainer.train(1, [(images, labels)])
    optimizer = torch.optim.SGD(reference.parameters(), 1.0)
    nn.functional.cross_entropy(reference(images), labels).backward()
    norm = nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    optimizer.step()
    assert norm > 0.01  # the clip did something
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_weight_decay_groups_put_norm_layers_and_biases_apart():
    model = models.create(netType="resnet", depth=8, dataset="cifar10", se=4)
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert len(optimizers.parameter_groups(model, 1e-4)) == 1
    groups = optimizers.parameter_groups(model, 1e-4, norm_decay=0.0)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in norms}
    other, norm, bias = optimizers.parameter_groups(model, 1e-4, 0.0, 1e-5)
    assert {id(p) for p in bias["params"]} == {id(p) for p in biases}  # SE and fc biases too
    assert bias["weight_decay"] == 1e-5 and norm["weight_decay"] == 0.0
    everything = other["params"] + norm["params"] + bias["params"]
    assert len(everything) == len(list(model.parameters()))
    opts = plan.parse([*CIFAR, "-normWeightDecay", "0", "-biasWeightDecay", "1e-5"])
    wired = recipe.make_optimizer(
        model, plan.training_recipe(opts), None
    ).param_groups  # the flags reach it
    assert [g["weight_decay"] for g in wired] == [1e-4, 0.0, 1e-5]


def test_the_default_options_train_bitwise_as_the_lua_loop():
    """Default flags: one SGD group, the Lua's LR per epoch, plain cross-entropy, no mixing,
    no average; the Trainer's weights equal a hand-written loop of the Lua's steps."""
    opts = plan.parse([*CIFAR, "-nEpochs", "4", "-LR", "0.3"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    reference = copy.deepcopy(model)
    lr_at = plan.learning_rate_schedule(opts)
    rule = schedules.lua_rule("cifar10", "resnet", 0.3, 4)
    trainer = cpu_trainer(model, recipe.make_optimizer(model, plan.training_recipe(opts), None),
                          lr_at, criterion=nn.CrossEntropyLoss(label_smoothing=opts.labelSmoothing),
                          clip_grad_norm=opts.clipGradNorm)  # fmt: skip
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9, dampening=0.0,
                                weight_decay=1e-4, nesterov=True)  # fmt: skip
    data = [batch(i) for i in range(3)]
    for epoch in range(1, 5):
        trainer.train(epoch, data)
        for group in optimizer.param_groups:
            group["lr"] = rule(epoch)
        for images, labels in data:
            optimizer.zero_grad(set_to_none=True)
            nn.CrossEntropyLoss()(reference(images), labels).backward()
            optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    assert (opts.mixup, opts.cutmix, opts.ema) == (0, 0, 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-labelSmoothing", "-0.1"], "-labelSmoothing must be in [0, 1), got -0.1"),
        (["-mixup", "-1"], "-mixup (alpha) must not be negative, got -1.0"),
        (["-cutmix", "-0.5"], "-cutmix (alpha) must not be negative"),
        (["-warmupEpochs", "5", "-nEpochs", "5"], "-warmupEpochs 5 must be shorter than the run"),
        (["-ema", "1.5"], "-ema (the decay) must be in (0, 1)"),
        (["-ema", "-0.9"], "-ema (the decay) must be in (0, 1)"),
        (["-lrSchedule", "poly"], "unknown -lrSchedule poly (options: lua, step, cosine)"),
        (["-lrSchedule", "step"], "-lrSchedule step needs -lrSteps"),
        (["-lrSteps", "30,60"], "-lrSteps is for -lrSchedule step"),
        (["-lrSchedule", "step", "-lrSteps", "60,30"], "invalid list of increasing epochs"),
        (["-emaEvery", "0"], "-emaEvery must be positive"),
        (["-normWeightDecay", "-1"], "-normWeightDecay must not be negative"),
        (["-clipGradNorm", "-1"], "-clipGradNorm must not be negative"),
        (["-lrSchedule", "cosine", "-lrMin", "0.5"], "-lrMin must be in [0, -LR)"),
        (["-loss", "focal"], "unknown -loss focal (options: ce, bce)"),
        (["-optimizer", "adamw", "-momentum", "0.8"], "-momentum is for -optimizer sgd, rmsprop"),
        (["-optimizer", "rmsprop", "-nesterov", "false"], "-nesterov is for -optimizer sgd, lars"),
        (["-loss", "bce", "-bceTargetThreshold", "1"], "-bceTargetThreshold must be in [0, 1)"),
        (["-bceTargetThreshold", "0.2"], "-bceTargetThreshold is for -loss bce (this run's is ce)"),
    ],
)
def test_bad_recipe_values_are_one_usage_error(extra, message):
    with pytest.raises(options.UsageError, match=re.escape(message)):
        plan.parse([*CIFAR, *extra])


def test_a_bad_recipe_value_exits_2_with_one_line(capsys):
    assert main.main([*CIFAR, "-labelSmoothing", "-0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -labelSmoothing") and err.count("\n") == 1


def run_main(*argv):
    done = runs.main_run(argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_validation_test_only_and_the_scripts_use_the_ema_weights(cifar10_root, tmp_path):
    save = tmp_path / "run"
    common = [*CIFAR, "-data", cifar10_root, "-batchSize", "4", "-gen", str(tmp_path / "gen")]
    trained = run_main(*common, "-nEpochs", "2", "-ema", "0.8", "-save", str(save))
    last_test = re.findall(r" \* Finished epoch # 2 +top1: +([\d.]+)", trained)[0]
    tested = run_main(*common, "-nEpochs", "2", "-testOnly", "-resume", str(save))
    assert "(its -ema weights)" in tested
    assert re.search(r" \* Results top1: +([\d.]+)", tested).group(1) == last_test
    record = torch.load(save / "model_2.pth", weights_only=True)
    assert record["ema"]["updates"] == 10
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import inference

    model, _, _ = inference.load_model(str(save / "model_2.pth"), torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, record["ema"]["model"][key])


def test_a_recipe_sets_its_flags_and_given_flags_win(jpeg_root, tmp_path):
    base = ["-dataset", "imagenet", "-data", jpeg_root, "-gen", str(tmp_path / "gen")]
    opts = plan.parse([*base, "-recipe", "torchvision", "-nEpochs", "20", "-LR", "0.2"])
    expected = {"batchSize": 1024, "LR": 0.2, "nEpochs": 20, "lrSchedule": "cosine",
                "warmupEpochs": 5.0, "autoAugment": "ta_wide", "randomErasing": 0.1,
                "labelSmoothing": 0.1, "mixup": 0.2, "cutmix": 1.0, "weightDecay": 2e-5,
                "normWeightDecay": 0.0, "trainCrop": 176, "valResize": 232, "valCrop": 224,
                "repeatedAug": 4, "emaEvery": 32, "nesterov": False}  # fmt: skip
    assert {k: getattr(opts, k) for k in expected} == expected
    summary = options.recipe_summary(opts)
    assert summary.startswith("=> -recipe torchvision: -batchSize 1024 -lrSchedule cosine")
    assert summary.endswith("(given on the command line: -LR -nEpochs)")
    small = plan.parse([*CIFAR, "-recipe", "resnext"])
    assert (small.nEpochs, small.batchSize, small.weightDecay) == (300, 128, 5e-4)
    assert plan.parse([*CIFAR, "-recipe", "fb"]).nEpochs == 164
    assert options.recipe_summary(plan.parse(CIFAR)) is None
    with pytest.raises(options.UsageError, match=r"-warmupEpochs 5 \(-recipe torchvision's\)"):
        plan.parse([*CIFAR, "-recipe", "torchvision", "-nEpochs", "3"])
    with pytest.raises(options.UsageError, match="unknown -recipe timm"):
        plan.parse([*CIFAR, "-recipe", "timm"])


def test_the_linear_scaling_note_follows_the_recipes_batch(capsys):
    note = options.linear_scaling_note(
        plan.parse([*CIFAR, "-recipe", "torchvision", "-batchSize", "256"])
    )
    assert "suggests -LR 0.125 (0.5 x 256/1024)" in note


def test_a_recipe_run_prints_its_values_and_saves_them(cifar10_root, tmp_path):
    save = tmp_path / "run"
    out = run_main(*CIFAR, "-data", cifar10_root, "-gen", str(tmp_path / "gen"), "-save",
                   str(save), "-recipe", "torchvision", "-nEpochs", "6", "-batchSize", "4",
                   "-LR", "0.01", "-warmupEpochs", "1", "-emaEvery", "2")  # fmt: skip
    assert "=> -recipe torchvision: -lrSchedule cosine -warmupStart 0.01" in out
    saved = json.loads((save / "opts.json").read_text())
    assert (saved["mixup"], saved["repeatedAug"], saved["ema"]) == (0.2, 4, 0.999966)
    assert torch.load(save / "model_6.pth", weights_only=True)["ema"]["updates"] > 0


def test_the_small_image_recipes_set_their_flags():
    paper = plan.parse([*CIFAR, "-recipe", "random-erasing"])
    expected = {"batchSize": 128, "nEpochs": 300, "LR": 0.1, "momentum": 0.9, "nesterov": False,
                "lrSchedule": "step", "lrSteps": (151, 226), "lrGamma": 0.1,
                "weightDecay": 5e-4, "randomErasing": 0.5, "erasingStyle": "authors"}  # fmt: skip
    assert {k: getattr(paper, k) for k in expected} == expected
    schedule = plan.learning_rate_schedule(paper)
    lrs = {epoch: schedule(epoch, 1) for epoch in (150, 151, 225, 226, 300)}
    assert lrs == pytest.approx({150: 0.1, 151: 0.01, 225: 0.01, 226: 0.001, 300: 0.001})
    fast = plan.parse([*CIFAR, "-recipe", "fast-small"])
    assert (fast.nEpochs, fast.lrSchedule, fast.erasingStyle, fast.randomErasing,
            fast.precision) == (40, "cosine", "paper", 0.25, "auto")  # fmt: skip


def test_nesterov_false_is_plain_momentum_and_a_resume_keeps_its_kind(cifar10_root, tmp_path):
    model = torch.nn.Linear(3, 2)
    assert optimizers.sgd(model, 0.1, 0.9, 1e-4).defaults["nesterov"] is True
    assert optimizers.sgd(model, 0.1, 0.9, 1e-4, nesterov=False).defaults["nesterov"] is False
    assert optimizers.sgd(model, 0.1, 0.0, 1e-4).defaults["nesterov"] is False  # plain SGD
    save = tmp_path / "run"
    common = [*CIFAR, "-data", cifar10_root, "-batchSize", "4", "-gen", str(tmp_path / "gen")]
    run_main(*common, "-nEpochs", "1", "-nesterov", "false", "-save", str(save))
    state = torch.load(save / "optimState_1.pth", weights_only=True)
    assert state["param_groups"][0]["nesterov"] is False
    refused = runs.main_run([*common, "-nEpochs", "2", "-resume", str(save), "-save", str(save)])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "saved with -nesterov false: resume with it" in refused.stderr
    run_main(
        *common, "-nEpochs", "2", "-nesterov", "false", "-resume", str(save), "-save", str(save)
    )


@pytest.mark.parametrize(("smoothing", "threshold"), [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2)])
def test_bce_is_timms_binary_cross_entropy_on_labels_and_on_mixed_targets(smoothing, threshold):
    """Against timm's BinaryCrossEntropy, fed as timm's train.py feeds it: labels, or the
    targets of timm's Mixup (which smooths them itself); ours smooths mixed rows as labels."""
    from timm.data.mixup import mixup_target
    from timm.loss import BinaryCrossEntropy

    from recipe import losses

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (8,), generator=generator)
    ours = losses.BinaryCrossEntropy(smoothing, threshold)
    cut = threshold or None
    timms = BinaryCrossEntropy(smoothing=smoothing, target_threshold=cut)
    assert torch.allclose(ours(logits, labels), timms(logits, labels), atol=1e-6)
    one_hot = nn.functional.one_hot(labels, 10).float()
    mixed = 0.7 * one_hot + 0.3 * one_hot.flip(0)  # what v2.MixUp gives, lambda 0.7
    timm_targets = mixup_target(labels, 10, lam=0.7, smoothing=smoothing)
    expected = BinaryCrossEntropy(target_threshold=cut)(logits, timm_targets)
    assert torch.allclose(ours(logits, mixed), expected, atol=1e-6)


def test_bce_equals_its_formula():
    """The mean over rows and classes of -(t log s(x) + (1 - t) log(1 - s(x))), with the
    smoothed targets t = one_hot (1 - 0.1) + 0.1 / K."""
    from recipe import losses

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([0, 2])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 0.9 + 0.1 / 3
    sigmoid = torch.sigmoid(logits)
    formula = -(targets * sigmoid.log() + (1 - targets) * (1 - sigmoid).log()).mean()
    assert torch.allclose(losses.BinaryCrossEntropy(0.1)(logits, labels), formula)
    above = losses.BinaryCrossEntropy(0.1, threshold=0.5)(logits, labels)
    hard = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(hard * sigmoid.log() + (1 - hard) * (1 - sigmoid).log()).mean()
    assert torch.allclose(above, expected)


def test_a_bce_run_prints_the_binary_loss(cifar10_root, tmp_path):
    """-loss bce trains with it: the first iteration's Err is near log 2 (a fresh network's
    logits are near 0), where cross-entropy's is near log 10."""
    errors = {}
    for loss in ("ce", "bce"):
        out = run_main("-dataset", "cifar10", "-data", cifar10_root, "-netType", "resnet",
                       "-depth", "8", "-batchSize", "4", "-nEpochs", "1", "-loss", loss,
                       "-save", tmp_path / loss, "-tensorboard", "false")  # fmt: skip
        errors[loss] = float(re.search(r"\[1\]\[1/5\] .* Err (\d+\.\d+)", out).group(1))
    assert abs(errors["bce"] - 0.693) < 0.15 and abs(errors["ce"] - 2.303) < 0.6
    saved = json.loads((tmp_path / "bce" / "opts.json").read_text())
    assert (saved["loss"], saved["bceTargetThreshold"]) == ("bce", 0.0)


def reference_optimizer(name: str, parameters, lr: float):
    """The library's own optimizer, built as its documentation does."""
    from timm import optim as timm_optim

    return {
        "sgd": lambda: torch.optim.SGD(
            parameters, lr, momentum=0.9, nesterov=True, weight_decay=1e-4
        ),  # fmt: skip
        "adamw": lambda: torch.optim.AdamW(parameters, lr, weight_decay=1e-4),
        "rmsprop": lambda: torch.optim.RMSprop(
            parameters, lr, alpha=0.9, eps=0.0316, momentum=0.9, weight_decay=1e-4
        ),  # fmt: skip
        "lamb": lambda: timm_optim.Lamb(parameters, lr, weight_decay=1e-4),
        "lars": lambda: timm_optim.Lars(
            parameters, lr, momentum=0.9, nesterov=True, weight_decay=1e-4
        ),  # fmt: skip
    }[name]()


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_each_optimizer_trains_as_its_library_does(name):
    """Three steps of the trainer with -optimizer NAME against torch's or timm's optimizer
    in a hand loop, at the schedule's LR: the same weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 10))  # fmt: skip
    reference = copy.deepcopy(model)
    spec = recipe.Recipe(schedule=lambda *_: 0.01, optimizer=name)
    optimizer = recipe.make_optimizer(model, spec, None)
    trainer = cpu_trainer(model, optimizer, spec.schedule)
    theirs = reference_optimizer(name, reference.parameters(), 0.01)
    for step in range(3):
        images, labels = batch(seed=step)
        trainer.train(1, [(images, labels)])
        theirs.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(reference(images), labels).backward()
        theirs.step()
    assert type(optimizer) is type(theirs)
    for ours, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(ours, expected, rtol=0, atol=1e-7)


def test_a_resume_with_another_optimizer_is_refused(cifar10_root, tmp_path):
    save = tmp_path / "run"
    common = [*CIFAR, "-data", cifar10_root, "-batchSize", "4", "-gen", str(tmp_path / "gen")]
    run_main(*common, "-nEpochs", "1", "-optimizer", "adamw", "-LR", "0.001", "-save", str(save))
    state = torch.load(save / "optimState_1.pth", weights_only=True)
    assert {group["optimizer"] for group in state["param_groups"]} == {"adamw"}
    refused = runs.main_run([*common, "-nEpochs", "2", "-resume", str(save), "-save", str(save)])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "optimizer state is of -optimizer adamw, not sgd: resume with -optimizer adamw" in (
        refused.stderr
    )
    run_main(*common, "-nEpochs", "2", "-optimizer", "adamw", "-resume", str(save), "-save",
             str(save))  # fmt: skip


def test_timms_optimizers_without_timm_are_one_line(monkeypatch):
    real = optimizers.importlib.util.find_spec
    monkeypatch.setattr(optimizers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "timm" else real(name, *a))  # fmt: skip
    with pytest.raises(options.UsageError, match=r"-optimizer lamb is timm's: pip install timm "):
        plan.make_plan(plan.parse([*CIFAR, "-optimizer", "lamb"]))
    plan.make_plan(plan.parse([*CIFAR, "-optimizer", "adamw"]))  # torch's: no timm needed


def test_the_rsb_recipes_set_their_procedures(jpeg_root, tmp_path):
    """ResNet strikes back's A1, A2, A3 (mmpretrain's configs): what each sets, and that
    they are folder-image recipes."""
    base = ["-dataset", "imagenet", "-data", jpeg_root, "-gen", str(tmp_path / "gen")]
    shared = {"batchSize": 2048, "optimizer": "lamb", "loss": "bce", "lrSchedule": "cosine",
              "warmupEpochs": 5.0, "cutmix": 1.0, "normWeightDecay": 0.0, "valCrop": 224,
              "valResize": 236}  # fmt: skip
    own = {
        "rsb-a1": {"nEpochs": 600, "LR": 0.005, "weightDecay": 0.01, "mixup": 0.2,
                   "dropPath": 0.05, "repeatedAug": 3, "trainCrop": 224,
                   "autoAugment": "rand-m7-mstd0.5-inc1"},
        "rsb-a2": {"nEpochs": 300, "LR": 0.005, "weightDecay": 0.02, "mixup": 0.1,
                   "dropPath": 0.05, "repeatedAug": 3, "trainCrop": 224,
                   "autoAugment": "rand-m7-mstd0.5-inc1"},
        "rsb-a3": {"nEpochs": 100, "LR": 0.008, "weightDecay": 0.02, "mixup": 0.1,
                   "dropPath": 0.0, "repeatedAug": 1, "trainCrop": 160,
                   "autoAugment": "rand-m6-mstd0.5-inc1"},
    }  # fmt: skip
    for name, values in own.items():
        opts = plan.parse([*base, "-recipe", name])
        expected = {**shared, **values}
        assert {key: getattr(opts, key) for key in expected} == expected, name
    with pytest.raises(options.UsageError, match="-recipe rsb-a1 is for folder"):
        plan.parse([*CIFAR, "-recipe", "rsb-a1"])


def test_timms_randaugment_trains_in_memory(cifar10_root, tmp_path):
    run_main(*CIFAR, "-data", cifar10_root, "-batchSize", "4", "-nEpochs", "1",
             "-autoAugment", "rand-m6-mstd0.5-inc1", "-save", str(tmp_path / "run"))  # fmt: skip
