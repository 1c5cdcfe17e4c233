"""The parsed options resolved once into the records each step of a run takes: after make_plan()
nothing reads the parsed options (main.py reads the plan, each step its own record)."""

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import datasets
import errors
import models
import opts as options
import recipe
import trackers
from datasets import erasing, folder_samples, imagenet, policies, table
from models import pretrained, setup
from recipe import losses, optimizers, schedules
from run import epochs
from runtime import devices, slurm

# The names the flags take, as the modules own them.
NAMES = options.Names(
    datasets=MappingProxyType({name: kind.epochs for name, kind in table.DATASETS.items()}),
    net_types=models.NET_TYPES,
    default_depth=models.default_depth,
    policies=policies.POLICIES,
    schedules=schedules.SCHEDULES,
    losses=losses.LOSSES,
    optimizers=optimizers.OPTIMIZERS,
    is_weights_name=pretrained.is_weights_name,
    devices=devices.DEVICES,
    memory_formats=devices.MEMORY_FORMAT_CHOICES,
)


@dataclass(frozen=True)
class Launch:
    """How this process runs: devices, precision, backends, its job."""

    device: str = "cpu"  # -device resolved: cuda, mps or cpu
    auto_device: bool = False  # -device auto chose it
    precision: str = "single"
    cudnn: str = "fastest"
    host_allocator: str = "cache"
    rendezvous_timeout: int = 300
    layout_rule: str | None = None  # -memoryFormat auto: the rule's reason, before timing
    requeue: slurm.Requeue = slurm.Requeue()  # -requeueSignal, -maxRequeues


@dataclass(frozen=True)
class Plan:
    """A run, resolved: what it reads, the network, how it trains, its epochs, its process."""

    data: datasets.DataSpec
    model: setup.ModelSpec
    recipe: recipe.Recipe
    loop: epochs.Loop
    launch: Launch
    test_only: bool
    options: Mapping  # every flag's value by name, as opts.json records them
    notes: tuple[str, ...]  # what the command line sets that is worth a line at start


def parse(argv=None) -> argparse.Namespace:
    """The command line (sys.argv's without argv) parsed and checked against the modules'
    names; UsageError naming what to fix."""
    return options.parse(argv, NAMES)


def adopt_weights(parsed: argparse.Namespace) -> tuple[argparse.Namespace, pretrained.Named | None]:
    """The options with -weights resolved (as parsed, and None, without): a copy whose
    network flags are the weights' network (a flag given otherwise is an error), and whose
    -valResize / -valCrop / -valInterpolation are how they were evaluated unless given (or
    -cropSize); the parsed options stay as they are."""
    if parsed.weights == "none":
        return parsed, None
    opts = argparse.Namespace(**vars(parsed))
    named = pretrained.resolve(opts.weights)
    if named.arch["dataset"] != opts.dataset:
        raise errors.UsageError(
            f"-weights {named.name} are a network for {named.arch['dataset']}: give -dataset"
            f" {named.arch['dataset']}"
        )
    for flag, value in ((flag, named.arch[flag]) for flag in models.ARCH_FLAGS):
        if flag in opts.given and getattr(opts, flag) != value:
            raise errors.UsageError(
                f"-weights {named.name} are a network of {models.arch_flags(named.arch)}:"
                f" drop -{flag} {getattr(opts, flag)}"
            )
        setattr(opts, flag, value)
    if "cropSize" in opts.given or table.is_small(opts.dataset):  # the user's crop, or none
        return opts, named
    sizes = {
        "valResize": named.preprocessing.resize,
        "valCrop": named.preprocessing.crop,
        "valInterpolation": named.preprocessing.interpolation,
    }
    for flag, size in sizes.items():
        if flag not in opts.given:
            setattr(opts, flag, size)
    options.validate_crops(opts)
    return opts, named


def make_plan(
    parsed: argparse.Namespace,
    machine: devices.Machine | None = None,
) -> Plan:
    """The plan of the parsed options on this machine (or the one given): -weights,
    -device, -memoryFormat and -precision auto resolved, as opts.json records them."""
    opts, named = adopt_weights(parsed)
    machine = machine or devices.Machine.here()
    kind = devices.device_type(opts.device, opts.nGPU, machine)
    layout, why = devices.memory_format(opts.memoryFormat, kind, machine)
    precision, precision_why = devices.precision(opts.precision, kind, machine)
    data, test_only = data_spec(opts), opts.testOnly
    return Plan(
        data=data,
        model=model_spec(opts, data.crops.val, layout, named),
        recipe=training_recipe(opts),
        loop=loop_spec(opts, data, test_only),
        launch=Launch(
            device=kind,
            auto_device=opts.device == "auto",
            precision=precision,
            cudnn=opts.cudnn,
            host_allocator=opts.hostAllocator,
            rendezvous_timeout=opts.rendezvousTimeout,
            layout_rule=why,
            requeue=requeue_spec(opts),
        ),
        test_only=test_only,
        options=MappingProxyType(
            {
                **{k: v for k, v in vars(opts).items() if k not in ("given", "configured")},
                "device": kind,
                "memoryFormat": layout,
                "precision": precision,
            }
        ),
        notes=(
            *options.start_notes(opts),
            *device_notes(kind, (precision, precision_why), machine),
        ),
    )


def requeue_spec(opts: argparse.Namespace) -> slurm.Requeue:
    """-requeueSignal's signals and -maxRequeues."""
    try:
        signals = slurm.signal_numbers(opts.requeueSignal)
    except ValueError as exc:
        raise errors.UsageError(f"-requeueSignal {opts.requeueSignal}: {exc}") from None
    return slurm.Requeue(signals, opts.maxRequeues)


def device_notes(kind: str, precision: tuple, machine) -> tuple[str, ...]:
    """The lines that say what -precision auto chose (a (choice, why) pair, why None when
    given), and bf16's use here; -memoryFormat auto's is said once decided (run/layouts.py)."""
    notes = [f"=> Precision: {precision[0]} (auto: {precision[1]})"] if precision[1] else []
    advice = devices.precision_advice(precision[0], kind, machine)
    return (*notes, advice) if advice else tuple(notes)


def data_spec(opts: argparse.Namespace) -> datasets.DataSpec:
    """What the run reads, and how."""
    crops = folder_samples.crops_for(
        opts.cropSize, opts.trainCrop, opts.valResize, opts.valCrop, opts.valInterpolation
    )
    return datasets.DataSpec(
        dataset=opts.dataset,
        data=opts.data,
        gen=opts.gen,
        batch_size=opts.batchSize,
        workers=opts.nThreads,
        seed=opts.manualSeed,
        ten_crop=opts.tenCrop,
        skip_corrupt=opts.skipCorrupt,
        decode_on_device=opts.decodeOnDevice,
        crops=crops,
        auto_augment=opts.autoAugment,
        erasing=erasing.with_box(
            erasing.Erasing(opts.randomErasing, opts.erasingStyle),
            opts.erasingArea,
            opts.erasingAspect,
        ),
        repeats=opts.repeatedAug,
        storage=imagenet.Storage(
            opts.imageColumn,
            opts.labelColumn,
            opts.shuffleBuffer,
            opts.shardSource,
            opts.fetchTimeout,
        ),
    )


def network(opts: argparse.Namespace) -> dict:
    """models.create()'s arguments that the flags give (nClasses None: the data's)."""
    return {
        "netType": opts.netType,
        "depth": opts.depth,
        "dataset": opts.dataset,
        "shortcutType": opts.shortcutType,
        "bottleneckType": opts.bottleneckType,
        "baseWidth": opts.baseWidth,
        "cardinality": opts.cardinality,
        "nClasses": opts.nClasses or None,
        "se": opts.se,
        "radix": opts.radix,
        "widenFactor": opts.widenFactor,
        "dropout": opts.dropout,
    }


def model_spec(
    opts: argparse.Namespace,
    val_crop: int,
    memory_format: str,
    named: pretrained.Named | None = None,
) -> setup.ModelSpec:
    """The network, where its weights come from (named: the resolved -weights), and what is
    done to it."""
    return setup.ModelSpec(
        arch=MappingProxyType(network(opts)),
        reset_classifier=opts.resetClassifier,
        frozen_stages=opts.frozenStages,
        norm_eval=opts.normEval,
        zero_init_residual=opts.zeroInitResidual,
        drop_path=opts.dropPath,
        head_dropout=opts.headDropout,
        recompute=opts.shareGradInput or opts.optnet,
        memory_format=memory_format,
        n_gpu=opts.nGPU,
        sync_bn=opts.syncBN,
        compile=opts.compile,
        retrain=opts.retrain,
        weights=named,
        val_crop=val_crop,
    )


def training_recipe(opts: argparse.Namespace) -> recipe.Recipe:
    """How the network is trained (an optimizer from a missing package refused now)."""
    spec = recipe.Recipe(
        schedule=learning_rate_schedule(opts),
        optimizer=opts.optimizer,
        momentum=opts.momentum,
        nesterov=opts.nesterov,
        weight_decay=opts.weightDecay,
        norm_weight_decay=opts.normWeightDecay,
        bias_weight_decay=opts.biasWeightDecay,
        optim_state=opts.optimState,
        label_smoothing=opts.labelSmoothing,
        loss=opts.loss,
        bce_target_threshold=opts.bceTargetThreshold,
        clip_grad_norm=opts.clipGradNorm,
        accum_steps=opts.accumSteps,
        mixup=opts.mixup,
        cutmix=opts.cutmix,
        ema=opts.ema,
        ema_every=opts.emaEvery,
        warmup_epochs=opts.warmupEpochs,
        print_every=print_interval(opts.printFreq),
    )
    if package := optimizers.missing_package(spec.optimizer):
        raise errors.UsageError(
            f"-optimizer {spec.optimizer} is {package}'s: pip install {package} (or choose sgd,"
            " adamw, rmsprop)"
        )
    return spec


def print_interval(every: int | str) -> int | None:
    """-printFreq: iterations between printed lines, or None for auto."""
    return None if every == "auto" else every


def learning_rate_schedule(opts: argparse.Namespace) -> schedules.Schedule:
    """-lrSchedule with its options: the Lua's per-dataset rule by default."""
    lua = schedules.lua_rule(opts.dataset, opts.netType, opts.LR, opts.nEpochs)
    return schedules.schedule(
        opts.lrSchedule,
        opts.LR,
        opts.nEpochs,
        lua=lua,
        steps=opts.lrSteps,
        gamma=opts.lrGamma,
        min_lr=opts.lrMin,
        warmup_from=(opts.warmupEpochs, opts.warmupStart),
    )


def chosen_trackers(text: str, test_only: bool) -> tuple[str, ...]:
    """-logger's trackers, each one's package installed (else one line naming it); none for
    -testOnly, which names the flag among those it ignores."""
    chosen = trackers.names(text)
    if test_only:
        return ()
    if package := trackers.missing_package(chosen):
        raise errors.UsageError(f"-logger {package} needs its package: pip install {package}")
    return chosen


def loop_spec(opts: argparse.Namespace, data: datasets.DataSpec, test_only: bool) -> epochs.Loop:
    """The epochs and their files."""
    return epochs.Loop(
        save=opts.save,
        resume=opts.resume,
        overwrite=opts.overwrite,
        tensorboard=opts.tensorboard,
        trackers=chosen_trackers(opts.logger, test_only),
        n_epochs=opts.nEpochs,
        epoch_number=opts.epochNumber,
        checkpoint_every=opts.checkpointEvery,
        keep_checkpoints=opts.keepCheckpoints,
        precise_bn=opts.preciseBN,
        evaluation=data.evaluation_sizes(),
    )
