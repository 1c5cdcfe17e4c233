"""Train or evaluate ResNet / PreResNet / ResNeXt / ResNeSt / SENet: python main.py -dataset
... (see -h)."""

import os
import signal
import sys


def stop_while_starting() -> None:
    """From the first line on, SIGINT (Ctrl-C) and SIGTERM while the modules load (torch
    takes seconds) end the process with one line and the signal's exit status: nothing
    has been read or written yet. run() handles them from its start on."""

    def stopped(number, _frame) -> None:
        name = signal.Signals(number).name
        os.write(2, f"\n=> Stopped by {name} while starting; nothing was saved\n".encode())
        os._exit(128 + number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stopped)


if __name__ == "__main__":
    stop_while_starting()

# The imports below take seconds (torch): a stop while they load is handled (above).
import math
import threading
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

import averaging
import checkpoints
import datasets
import errors
import launch
import models
import optimizers
import opts as options
import parallel
import schedules
import train
from datasets import mixing
from launch import Processes, StartError
from models import pretrained
from models.loading import load_weights

# The flags that choose the network (create()'s arguments of the same names).
ARCH_FLAGS = ("netType", "depth", "shortcutType", "bottleneckType", "baseWidth", "cardinality",
              "se", "radix")  # fmt: skip
CHANNELS_LAST = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def retrained_arch(opts, retrained: dict) -> dict:
    """The network of a -retrain file: as saved, else the flags' with the file's fc width."""
    if retrained.get("arch"):
        return models.complete_arch(retrained["arch"])
    fc_weight = retrained["model"].get("fc.weight")
    n_classes = fc_weight.shape[0] if fc_weight is not None else opts.nClasses or None
    return {**models.arch_from_opts(opts), "nClasses": n_classes}


def adopt_weights(opts) -> pretrained.Named | None:
    """-weights resolved (None without): the network flags become the weights' network (a
    flag given otherwise is an error), and -valResize / -valCrop / -valInterpolation how they
    were evaluated unless given (or -cropSize)."""
    if opts.weights == "none":
        return None
    named = pretrained.resolve(opts.weights)
    for flag, value in ((flag, named.arch[flag]) for flag in ARCH_FLAGS):
        if flag in opts.given and getattr(opts, flag) != value:
            raise errors.UsageError(
                f"-weights {named.name} are a network of {models.arch_flags(named.arch)}:"
                f" drop -{flag} {getattr(opts, flag)}"
            )
        setattr(opts, flag, value)
    if "cropSize" in opts.given:  # the user's crop: the val sizes follow it, as in the Lua
        return named
    sizes = {"valResize": named.preprocessing.resize, "valCrop": named.preprocessing.crop,
             "valInterpolation": named.preprocessing.interpolation}  # fmt: skip
    for flag, size in sizes.items():
        if flag not in opts.given:
            setattr(opts, flag, size)
    options.validate_crops(opts)
    return named


def intended_arch(opts, classes: list[str], file_arch: dict | None) -> dict:
    """The network this run trains: from -retrain's file (file_arch) if given, else the flags."""
    arch = dict(file_arch) if file_arch else models.arch_from_opts(opts)
    if opts.resetClassifier:
        arch["nClasses"] = opts.nClasses or len(classes)
    elif not file_arch and opts.dataset == "imagenet" and not opts.nClasses:
        arch["nClasses"] = len(classes)  # any class-per-folder data set, not only ImageNet-1k
    return arch


def build_model(opts, classes, checkpoint, retrained) -> tuple[nn.Module, dict]:
    """The model to train (fresh, retrained or resumed) and the arch it is saved under,
    with -frozenStages and -normEval applied."""
    if checkpoint:
        check_frozen_settings(opts, checkpoint["state"].get("frozen", [-1, False]))
    elif opts.normEval and not retrained:
        raise StartError(
            "-normEval true keeps every BatchNorm at its starting statistics (mean 0, variance"
            " 1) when no weights trained them: it is for fine-tuning; add -retrain FILE or"
            " -weights NAME, or leave -normEval out"
        )
    model, arch = built_model(opts, classes, checkpoint, retrained)
    if opts.zeroInitResidual and not (checkpoint or retrained):
        models.zero_init_residual(model)
    models.set_frozen(model, opts.frozenStages, opts.normEval)
    return model, arch


def check_frozen_settings(opts, saved: list) -> None:
    """A resumed run freezes what the run it continues froze (its optimizer holds exactly
    the trainable parameters)."""
    if list(saved) != [opts.frozenStages, opts.normEval]:
        flags = f"-frozenStages {saved[0]} -normEval {str(saved[1]).lower()}"
        raise checkpoints.CheckpointError(
            f"{opts.resume} was trained with {flags}; resume with the same flags"
        )


def built_model(opts, classes, checkpoint, retrained) -> tuple[nn.Module, dict]:
    """build_model() before the fine-tuning options."""
    file_arch = retrained_arch(opts, retrained) if retrained else None
    arch = intended_arch(opts, classes, file_arch)
    if checkpoint:
        saved = models.complete_arch(checkpoint["model"]["arch"])
        differing = {k: (saved.get(k), v) for k, v in arch.items() if saved.get(k) != v}
        if differing:
            listed = ", ".join(f"{k} {old} (asked: {new})" for k, (old, new) in differing.items())
            raise checkpoints.CheckpointError(
                f"{opts.resume} holds a checkpoint of another network: {listed}; resume with"
                " its options or choose another -resume folder"
            )
        weights, averaged = checkpoint["model"]["model"], False  # training continues these
        if opts.testOnly:  # -testOnly evaluates the -ema weights when there are
            weights, averaged = checkpoints.evaluated_weights(checkpoint["model"])
        print(
            f"=> Resuming model from {checkpoint['modelPath']}" + " (its -ema weights)" * averaged
        )
        model = models.create(**saved)
        load_weights(model, weights, checkpoint["modelPath"])
        return model, saved
    print(f"=> Creating model from file: models/{arch['netType']}.py")
    for line in models.describe(**arch):
        print(line)
    if retrained:
        weights, averaged = checkpoints.evaluated_weights(retrained)
        source = retrained.get("weights") or opts.retrain  # -weights said so when fetched
        if source == opts.retrain:
            print(f"Loading model from file: {source}" + (" (its -ema weights)" * averaged))
        model = models.create(**file_arch)
        load_weights(model, weights, source)
        crop = (retrained.get("evaluation") or {}).get("crop", datasets.imagenet.LUA_CROPS.val)
        before = (file_arch["dataset"], crop)
        if note := datasets.input_note(before, (opts.dataset, datasets.crops_of(opts).val)):
            print(note)
        if opts.resetClassifier:
            print(f" => Replacing classifier with {arch['nClasses']}-way classifier")
            models.replace_classifier(model, arch["nClasses"])
        return model, arch
    return models.create(**arch), arch


def check_classes(model: nn.Module, classes: list[str]) -> None:
    """The classifier must have an output for every class of the data; more outputs than
    classes (a -retrain file of another data set) is said once."""
    outputs = model.fc.out_features
    if outputs < len(classes):
        raise StartError(
            f"the network has {outputs} outputs but the data has {len(classes)} classes;"
            " use -resetClassifier true for a classifier of the data's classes"
        )
    if outputs > len(classes):
        print(
            f"=> warning: the network has {outputs} outputs for {len(classes)} classes; the"
            f" extra {outputs - len(classes)} are trained toward never being picked. For a"
            f" {len(classes)}-way classifier add -resetClassifier true"
        )


def learning_rate_schedule(opts) -> schedules.Schedule:
    """-lrSchedule with its options: the Lua's per-dataset rule by default."""
    lua = schedules.lua_rule(opts.dataset, opts.netType, opts.LR, opts.nEpochs)
    return schedules.schedule(opts.lrSchedule, opts.LR, opts.nEpochs, lua=lua,
                              steps=opts.lrSteps, gamma=opts.lrGamma, min_lr=opts.lrMin,
                              warmup=opts.warmupEpochs, warmup_start=opts.warmupStart)  # fmt: skip


def make_optimizer(model: nn.Module, opts, checkpoint) -> torch.optim.Optimizer:
    """The Lua's SGD with -normWeightDecay / -biasWeightDecay groups; state from -resume or
    -optimState."""
    optimizer = optimizers.sgd(model, opts.LR, opts.momentum, opts.weightDecay,
                               opts.normWeightDecay, opts.biasWeightDecay)  # fmt: skip
    state = checkpoint["optimState"] if checkpoint else None
    if state is None and opts.optimState != "none":
        state = checkpoints.load_file(opts.optimState)
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise checkpoints.CheckpointError(
                f"optimizer state does not fit this network and its parameter groups (resume"
                f" with the -normWeightDecay / -biasWeightDecay it was saved with): {exc}"
            ) from None
    return optimizer


def options_record(opts, arch: dict) -> dict:
    """The resolved options and the network, as opts.json and TensorBoard keep them (the
    parser's list of the flags given is not an option); the network flags are those of
    the network trained (a -retrain file's or a resumed run's, not the flags' defaults)."""
    record = {k: v for k, v in vars(opts).items() if k != "given"}
    record.update({flag: arch[flag] for flag in ARCH_FLAGS if flag in arch})
    return {**record, "arch": arch}


def check_save_folder(opts) -> None:
    """-save may hold another run only when this run continues or replaces it."""
    if not opts.testOnly:  # testing writes nothing there
        checkpoints.check_run_folder(opts.save, opts.resume, opts.overwrite)


class EpochLoop:
    """The Lua's epoch loop (train, test, remember the best top-1, save) made resumable:
    checkpoints every -checkpointEvery iterations and on SIGTERM / SIGINT."""

    def __init__(self, opts, trainer, loaders, run_folder, network, checkpoint, stop,
                 processes, devices):  # fmt: skip
        self.opts, self.trainer, self.run_folder = opts, trainer, run_folder
        self.arch, self.classes = network  # what the model files describe
        self.train_loader, self.val_loader = loaders
        self.processes, self.stop, self.devices = processes, stop, devices
        self.best = (math.inf, math.inf)
        self.epoch, self.resume_sample, self.resume_sums = opts.epochNumber, 0, None
        self.position = (0, 0)  # (iteration, sample) the epoch being trained started at
        if checkpoint:
            self.best = (checkpoint["bestTop1"], checkpoint["bestTop5"])
            self.resume_at(checkpoint)

    def resume_at(self, checkpoint: dict) -> None:
        """Continue after the checkpoint's epoch, or inside it at the sample it reached
        (whatever -batchSize was then), with the epoch's training sums so far."""
        if checkpoint["iteration"] == 0:
            self.epoch = checkpoint["epoch"] + 1
            return
        self.epoch = checkpoint["epoch"]
        samples = checkpoint["samples"]
        if samples is None:  # written before samples were recorded: same -batchSize
            samples = checkpoint["iteration"] * self.opts.batchSize
        self.resume_sample = samples
        if self.processes.rank == 0:  # the sums of every process, added up once
            self.resume_sums = checkpoint["state"].get("epochSums")

    def epoch_size(self) -> int:
        """Samples in an epoch's order."""
        return len(self.train_loader.dataset)

    def save(self, epoch: int, iteration: int = 0, is_best: bool = False, sums=False) -> None:
        """Checkpoint after `epoch` (iteration 0) or after an iteration inside it, with the
        epoch's training sums so far when `sums` (a collective: every process calls it at
        the same iteration, as every process calls it); only rank 0 writes (every rank
        holds the same weights), with the random generators of every rank."""
        rng = launch.all_gathered(launch.rng_state(self.devices), self.processes)
        state = {"rng": rng, "scaler": self.trainer.scaler.state_dict(),
                 "frozen": [self.opts.frozenStages, self.opts.normEval]}  # fmt: skip
        samples = 0
        if iteration:  # where in the epoch's order
            first_iteration, first_sample = self.position
            samples = first_sample + (iteration - first_iteration) * self.opts.batchSize
            samples = min(samples, self.epoch_size())
        if sums:
            state["epochSums"] = self.trainer.all_processes(self.trainer.sums.snapshot())
        if self.processes.rank != 0:
            return
        self.run_folder()
        average = self.trainer.average.state_dict() if self.trainer.average else None
        checkpoints.save(
            self.opts.save, epoch, self.trainer.model, self.trainer.optimizer.state_dict(),
            arch=self.arch, classes=self.classes, is_best=is_best,
            best=self.best, iteration=iteration, samples=samples, state=state,
            keep=self.opts.keepCheckpoints, average=average,
            evaluation=datasets.evaluation_sizes(self.opts),
        )  # fmt: skip

    def after_step(self, epoch: int, iteration: int) -> None:
        """Periodic and requested mid-epoch checkpoints."""
        every, stopping = self.opts.checkpointEvery, self.stop()
        if stopping or (every and iteration % every == 0):
            self.trainer.check_finite()  # never checkpoint weights a NaN has reached
            self.save(epoch, iteration, sums=True)
        if stopping:
            raise train.Interrupted(f"at epoch {epoch}, iteration {iteration}")

    def train_epoch(self, epoch: int) -> int:
        """Train one epoch, from where a resumed run stopped inside it; returns the
        epoch's last iteration."""
        first, self.resume_sample = self.resume_sample, 0
        sums, self.resume_sums = self.resume_sums, None
        self.position = (first // self.opts.batchSize, first)
        if first >= self.epoch_size():  # trained before a stop during its test: test it
            return max(1, -(-first // self.opts.batchSize))
        if first % self.opts.batchSize:
            print(f"=> Resuming epoch {epoch} at image {first} (a checkpoint written with"
                  f" another -batchSize)")  # fmt: skip
        datasets.set_epoch(self.train_loader, epoch, first)
        self.trainer.train(epoch, self.train_loader, start=self.position[0],
                           on_step=self.after_step, totals=sums)  # fmt: skip
        return self.position[0] + len(self.train_loader)

    def evaluate(self, epoch: int) -> tuple[float, float]:
        """The test pass after an epoch (with -preciseBN's statistics first, and rank 0's
        BatchNorm buffers in every process): (top1, top5)."""
        precise_bn(self.opts, self.trainer, self.train_loader, epoch)
        parallel.share_buffers(self.trainer.evaluated_model(), self.processes)
        datasets.set_epoch(self.val_loader, epoch)
        return self.trainer.test(epoch, self.val_loader, stop=self.stop)

    def run(self) -> None:
        """Epochs from the start (or resume) point to -nEpochs."""
        if self.epoch > self.opts.nEpochs:
            print(f"=> {self.opts.resume} finished epoch {self.epoch - 1} of -nEpochs"
                  f" {self.opts.nEpochs}: nothing to train (raise -nEpochs to go on)")  # fmt: skip
        self.stop.deferred = True  # from now on a stop request saves first
        for epoch in range(self.epoch, self.opts.nEpochs + 1):
            last = self.train_epoch(epoch)
            try:
                top1, top5 = self.evaluate(epoch)
            except Exception as exc:
                # Trained, not yet tested: keep the epoch (a resumed run tests it). After
                # a failure in one process only, the others could not join the save.
                if isinstance(exc, train.Interrupted) or self.processes.world == 1:
                    self.save(epoch, last)
                raise
            is_best = top1 < self.best[0]
            if is_best:
                self.best = (top1, top5)
                top5_text = f"{top5:.14g}" if self.trainer.progress.top5 else "-"
                print(" * Best model ", f"{top1:.14g}", top5_text, sep="\t")
            self.save(epoch, is_best=is_best)
            if self.stop():
                raise train.Interrupted(f"after epoch {epoch}")
        top5_text = self.trainer.progress.top5_text(self.best[1], 6)
        print(f" * Finished top1: {self.best[0]:6.3f}  top5: {top5_text}")


def precise_bn(opts, trainer: train.Trainer, train_loader, epoch: int) -> None:
    """-preciseBN N: BatchNorm statistics from N training images of epoch's order."""
    if opts.preciseBN == 0:
        return
    datasets.set_epoch(train_loader, epoch)
    batches = math.ceil(opts.preciseBN / opts.batchSize)  # -batchSize is the global batch
    images = trainer.recompute_bn_statistics(train_loader, batches)
    trainer.progress.say(f"=> Recomputed BatchNorm statistics on {images} training images")


REFERENCE_BATCH = {"imagenet": 256}  # the recipes' batch for -LR 0.1; CIFAR's is 128


def linear_scaling_note(opts) -> None:
    """Say once what -LR the linear scaling rule gives when the user changed -batchSize to
    another than the recipe's (-recipe's, else the Lua's) and left -LR at the recipe's."""
    given = getattr(opts, "given", ())
    if opts.testOnly or "batchSize" not in given or "LR" in given:
        return
    recipe = options.recipe_values(opts.recipe, opts.dataset)
    reference = recipe.get("batchSize", REFERENCE_BATCH.get(opts.dataset, 128))
    base = recipe.get("LR", 0.1)
    suggested = base * opts.batchSize / reference
    if opts.batchSize != reference and not math.isclose(opts.LR, suggested):
        print(
            f"=> Note: -batchSize {opts.batchSize} is not the recipe's {reference}; the linear"
            f" scaling rule suggests -LR {suggested:g} ({base:g} x {opts.batchSize}/{reference})"
        )


def run(opts, named: pretrained.Named | None) -> int:
    """Everything after parsing, in each process of a torchrun job (or the only one); named:
    the resolved -weights."""
    stop = launch.StopRequest()
    stop.install()  # before any work: a stop request never ends in a traceback
    thread_hook = launch.quiet_thread_write_errors()
    try:
        return run_started(opts, stop, named)
    finally:
        stop.restore()
        threading.excepthook = thread_hook


def run_started(opts, stop: launch.StopRequest, named: pretrained.Named | None) -> int:
    """run(), once stop requests are handled."""
    job = launch.job_environment()
    world = job.world
    if opts.batchSize % world:
        raise StartError(
            f"-batchSize {opts.batchSize} (the global batch) does not divide among {world}"
            f" processes; use a multiple of {world}"
        )
    check_save_folder(opts)
    launch.configure_backends(opts.cudnn)  # before CUDA starts: cuBLAS reads its setting then
    stop.doing = "waiting for the other processes of the job"
    processes = launch.start_processes(opts.nGPU, job, opts.rendezvousTimeout)
    stop.processes = processes
    try:
        return run_process(opts, processes, stop, named)
    finally:
        # Stopped while a collective waits for a peer: destroying the group would wait too.
        if processes.world > 1 and sys.exc_info()[0] is not launch.Stopped:
            dist.destroy_process_group()


def load_checkpoint(opts, rank: int, devices: list[torch.device]) -> dict | None:
    """The -resume checkpoint (this rank's RNG states restored), or None to start afresh."""
    if opts.resume == "none":
        return None
    checkpoint = checkpoints.latest(opts.resume)
    if checkpoint is None:
        print(f"=> No checkpoint in {opts.resume}: training starts from scratch")
        return None
    print(f"=> Loading checkpoint {os.path.join(opts.resume, checkpoints.LATEST)}")
    launch.restore_rng_state(checkpoint["state"].get("rng", {}), rank, devices)
    return checkpoint


def start_weights(opts, named: pretrained.Named | None, checkpoint: dict | None,
                  processes: Processes) -> dict | None:  # fmt: skip
    """The model record training starts from: -retrain's file, or the named -weights
    (downloaded once: rank 0 first, the others then read the cache), unless resuming a
    checkpoint."""
    if opts.retrain != "none":
        return checkpoints.load_model_file(opts.retrain)
    if named is None or checkpoint is not None:
        return None
    if processes.rank == 0:
        print(weights_summary(named))
    return parallel.in_turns(processes, lambda: pretrained.fetch(named, processes.rank == 0))


def weights_summary(named: pretrained.Named) -> str:
    """What -weights brings: the network, its classes, its evaluation sizes when they are
    not the Lua's."""
    line = f"=> Weights {named.name} ({named.library}): {models.arch_flags(named.arch)}"
    outputs = named.arch["nClasses"]
    line += f", {outputs} classes" + " (ImageNet-1k's)" * (outputs == 1000)
    sizes = named.preprocessing
    lua = datasets.imagenet.LUA_CROPS
    if sizes[:3] != (lua.val_resize, lua.val, lua.val_interpolation):
        line += (f"; evaluated at resize {sizes.resize} ({sizes.interpolation}), crop"
                 f" {sizes.crop}: -valResize, -valCrop and -valInterpolation default to those"
                 " unless -cropSize is given")  # fmt: skip
    if named.published:
        top1, top5 = named.published
        line += f"; published ImageNet-1k error top1 {top1:g}  top5 {top5:g}"
    return line


def run_process(opts, processes: Processes, stop: launch.StopRequest,
                named: pretrained.Named | None) -> int:  # fmt: skip
    """Validate, build, then train or test."""
    device = launch.select_device(opts.nGPU, processes)
    launch.precision_settings(opts.precision, device)  # a bad combination fails before any work
    launch.precision_note(opts.precision, device)
    datasets.check_image_sizes(opts.dataset, datasets.crops_of(opts),
                               batch=max(1, opts.batchSize // processes.world),
                               workers=opts.nThreads, memory=partial(launch.device_memory, device),
                               device=device.type)  # fmt: skip
    parallel.check_compile(opts.compile, device, opts.nGPU, processes.world)
    launch.configure_host_allocator(opts.hostAllocator)  # before workers fork: they inherit it
    torch.manual_seed(opts.manualSeed)
    models.check_arch({**models.arch_from_opts(opts), "nClasses": opts.nClasses or 1})
    devices = parallel.devices_used(device, opts.nGPU, processes.world)
    checkpoint = load_checkpoint(opts, processes.rank, devices)
    retrained = start_weights(opts, named, checkpoint, processes)
    if (summary := options.recipe_summary(opts)) and processes.rank == 0:
        print(summary)
    linear_scaling_note(opts)
    stop.doing = "loading the data"
    loaders = parallel.in_turns(
        processes, lambda: datasets.create_loaders(opts, device, processes.rank, processes.world)
    )
    try:
        return train_or_test(opts, (device, devices), loaders, (checkpoint, retrained),
                             processes, stop)  # fmt: skip
    finally:
        for loader in loaders:
            datasets.close(loader)


def prepare_model(opts, model: nn.Module, device: torch.device, dtypes: tuple, world: int):
    """-optnet, then device, dtype and layout (dtypes: the parameters' and autocast's), then
    the spread over devices and processes (and -compile): (model to train, to evaluate)."""
    if opts.shareGradInput or opts.optnet:
        print("=> Recomputing residual blocks in the backward pass to save memory (-optnet)")
        models.set_activation_checkpointing(model)
    dtype, autocast_dtype = dtypes
    model = model.to(device, dtype).to(memory_format=CHANNELS_LAST[opts.memoryFormat])
    return parallel.spread_model(model, device, n_gpu=opts.nGPU, world=world,
                                 autocast_dtype=autocast_dtype, sync_bn=opts.syncBN,
                                 compile_model=opts.compile)  # fmt: skip


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """values summed over the processes of the distributed run."""
    dist.all_reduce(values)
    return values


def make_trainer(opts, model, device, checkpoint, processes: Processes,
                 progress=None) -> train.Trainer:  # fmt: skip
    """The Trainer for the options, with the optimizer and loss scale of -resume."""
    dtype, autocast_dtype = launch.precision_settings(opts.precision, device)
    trained, evaluated = prepare_model(opts, model, device, (dtype, autocast_dtype),
                                       processes.world)  # fmt: skip
    distributed = processes.world > 1
    trainer = train.Trainer(
        trained,
        nn.CrossEntropyLoss(label_smoothing=opts.labelSmoothing),
        make_optimizer(trained, opts, checkpoint),
        learning_rate_schedule(opts),
        device=device,
        n_crops=10 if opts.tenCrop else 1,
        memory_format=CHANNELS_LAST[opts.memoryFormat],
        dtype=dtype,
        autocast_dtype=autocast_dtype,
        print_every=opts.printFreq,
        clip_grad_norm=opts.clipGradNorm,
        reduce=sum_over_processes if distributed else None,
        progress=progress,
        evaluated=evaluated,
        # With -skipCorrupt a process may get no readable image of a batch: every process
        # then leaves that step out, so that their gradient all-reduces stay paired.
        every_process=partial(launch.every_process, processes=processes)
        if distributed and opts.skipCorrupt
        else None,
        mix=batch_mixing(opts, checkpoints.unwrap(trained).fc.out_features),
        average=weight_average(opts, trained, checkpoint),
    )
    if checkpoint and checkpoint["state"].get("scaler"):
        trainer.scaler.load_state_dict(checkpoint["state"]["scaler"])  # fp16 loss scale
    return trainer


def batch_mixing(opts, n_outputs: int):
    """-mixup / -cutmix on the training batches, or None."""
    if opts.testOnly or not (opts.mixup or opts.cutmix):
        return None
    print(f"=> Mixing training batches (-mixup {opts.mixup:g} -cutmix {opts.cutmix:g}): the"
          " training errors are against each mixed image's dominant class")  # fmt: skip
    return mixing.BatchMixing(n_outputs, mixup=opts.mixup, cutmix=opts.cutmix,
                              seed=opts.manualSeed + 2)  # fmt: skip


def weight_average(opts, trained: nn.Module, checkpoint):
    """-ema: the average of the trained weights (the -resume checkpoint's when it has one),
    or None."""
    if opts.testOnly or not opts.ema:
        return None
    average = averaging.ExponentialAverage(checkpoints.unwrap(trained), opts.ema,
                                           opts.emaEvery, opts.warmupEpochs)  # fmt: skip
    saved = checkpoint["model"].get("ema") if checkpoint else None
    if saved is not None:
        average.load_state_dict(saved)
    elif checkpoint:
        print("=> The resumed checkpoint has no -ema average: it starts from the weights")
    return average


def train_or_test(opts, devices, loaders, sources, processes: Processes, stop) -> int:
    """Build the model and trainer on the loaders' classes (devices: the process's device
    and all it uses; sources: the -resume checkpoint and the -retrain file, or None), then
    train or test."""
    (device, used), (checkpoint, retrained) = devices, sources
    classes = list(loaders[0].dataset.classes)
    if not opts.testOnly:
        saved = checkpoint["model"].get("ema") if checkpoint else None
        averaging.check_start(saved, opts.ema, opts.emaEvery, len(loaders[0]), opts.resume)
    model, arch = build_model(opts, classes, checkpoint, retrained)
    check_classes(model, classes)
    bar = sys.stdout.isatty()  # on a terminal: progress bars; else the Lua's lines
    shown = {"bar": bar, "top5": len(classes) > 5}  # top-5 of 5 classes or fewer says nothing
    if opts.testOnly:
        tested = checkpoint["model"] if checkpoint else retrained
        averaged = tested is not None and checkpoints.evaluated_weights(tested)[1]
        if (note := options.test_only_note(opts, averaged)) and processes.rank == 0:
            print(note)
        trainer = make_trainer(opts, model, device, checkpoint, processes,
                               train.Progress(**shown))  # fmt: skip
        stop.doing = "testing"
        precise_bn(opts, trainer, loaders[0], max(opts.epochNumber, 1))
        top1, top5 = trainer.test(0, loaders[1], summary=False)
        print(f" * Results top1: {top1:6.3f}  top5: {trainer.progress.top5_text(top5, 6)}")
        return 0
    run_folder = checkpoints.RunFolder(opts.save, opts.overwrite, options_record(opts, arch))
    records = None
    if processes.rank == 0:
        print(f"=> Saving checkpoints and records in {os.path.abspath(opts.save)}")
        records = train.RunRecords(opts.save, len(loaders[0]), tensorboard=opts.tensorboard,
                                   options=options_record(opts, arch),
                                   before_first_write=run_folder)  # fmt: skip
    trainer = make_trainer(opts, model, device, checkpoint, processes,
                           train.Progress(record=records, **shown))  # fmt: skip
    side = datasets.input_side(opts.dataset, datasets.crops_of(opts).val)
    trainer.try_evaluation((max(1, opts.batchSize // processes.world), 3, side, side))
    loop = EpochLoop(opts, trainer, loaders, run_folder, (arch, classes), checkpoint, stop,
                     processes, used)  # fmt: skip
    try:
        loop.run()
    except train.Interrupted as exc:
        name = signal.Signals(stop.signal_number).name
        print(f"=> Stopped by {name} {exc}; checkpoint saved. Continue with the same command"
              f" and -resume {opts.save}")  # fmt: skip
        return 128 + stop.signal_number
    finally:
        if records is not None:
            records.close()
    return 0


def main(argv=None) -> int:
    """Entry point: one 'error:' line and exit status 2 for every bad input."""
    sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8
    try:
        opts = options.parse(argv)
        return run(opts, adopt_weights(opts))
    except Exception as exc:  # what ended the run, said once: exit_status tells bugs apart
        return errors.exit_status(exc, distributed=launch.in_a_job())
    except KeyboardInterrupt as exc:
        return errors.exit_status(exc, distributed=False)


def flush_output(status: int) -> int:
    """Flush stdout and return the exit status; when stdout cannot be written (a full
    device, a closed pipe) say so unless the run already failed, and point it at /dev/null
    so that the interpreter's exit does not complain again."""
    try:
        sys.stdout.flush()
        return status
    except OSError as exc:
        if status == 0:
            print(f"error: {errors.one_line(exc)}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status or 1


if __name__ == "__main__":
    sys.exit(flush_output(main()))
