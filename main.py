"""Train or evaluate ResNet / PreResNet / ResNeXt: python main.py -dataset ... (see -h)."""

import ctypes
import errno
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

import checkpoints
import datasets
import models
import opts as options
import train
from models import sync_batchnorm

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
CHANNELS_LAST = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class StartError(ValueError):
    """A start that cannot go on (bad combination found after parsing)."""


class Processes(NamedTuple):
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo group for small CPU messages (stop requests)


def torchrun_world() -> int:
    """The number of processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def uses_gpus(n_gpu: int) -> bool:
    """Whether this run computes on CUDA: asked for with -nGPU and present."""
    return n_gpu > 0 and torch.cuda.is_available()


def start_processes(n_gpu: int) -> Processes:
    """Join the process group torchrun describes in the environment: nccl with one GPU per
    process, gloo on CPUs. Without torchrun (or WORLD_SIZE 1): one process."""
    world = torchrun_world()
    if world <= 1:
        return Processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpus = uses_gpus(n_gpu)
    if on_gpus:
        torch.cuda.set_device(local_rank)
    # A peer that died makes collectives fail after this long instead of waiting forever.
    dist.init_process_group("nccl" if on_gpus else "gloo", timeout=timedelta(minutes=5))
    control = dist.new_group(backend="gloo") if on_gpus else None
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - only rank 0 prints
    else:
        where = "GPU" if on_gpus else "CPU"
        print(f"=> Distributed: {world} processes, one {where} each ({dist.get_backend()})")
    return Processes(dist.get_rank(), world, local_rank, control)


def select_device(n_gpu: int, processes: Processes | None = None) -> torch.device:
    """CUDA when asked for and present, else the CPU (said once); under torchrun, the
    process's own GPU."""
    if processes is not None and processes.world > 1:
        if uses_gpus(n_gpu):
            return torch.device("cuda", processes.local_rank)
        return torch.device("cpu")
    if uses_gpus(n_gpu):
        if n_gpu > torch.cuda.device_count():
            raise StartError(f"-nGPU {n_gpu} but only {torch.cuda.device_count()} GPUs are visible")
        return torch.device("cuda")
    if n_gpu > 0:
        print("=> No CUDA device found: running on the CPU")
    return torch.device("cpu")


def configure_backends(cudnn_mode: str) -> None:
    """The Lua's -cudnn fastest | default | deterministic."""
    if cudnn_mode == "fastest":
        torch.backends.cudnn.benchmark = True
    elif cudnn_mode == "deterministic":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def configure_host_allocator(mode: str) -> bool:
    """-hostAllocator cache: glibc keeps freed memory for reuse; True if it was set."""
    if mode != "cache" or platform.libc_ver()[0] != "glibc":
        return False
    # By default glibc maps each large block (a batch's activations) on its own and unmaps
    # it on free, so every step faults its activations back in as fresh zeroed pages: about
    # a fifth of a CPU training step. From the heap, with no trimming, they are reused.
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def precision_settings(
    precision: str, device: torch.device
) -> tuple[torch.dtype, torch.dtype | None]:
    """(parameter dtype, autocast dtype) for -precision."""
    if precision == "half" and device.type != "cuda":
        raise StartError("-precision half needs a CUDA device; on the CPU use bf16 or single")
    return {
        "single": (torch.float32, None),
        "double": (torch.float64, None),
        "half": (torch.float32, torch.float16),
        "bf16": (torch.float32, torch.bfloat16),
    }[precision]


def retrained_arch(opts, retrained: dict) -> dict:
    """The network of a -retrain file: as saved, else the flags' with the file's fc width."""
    if retrained.get("arch"):
        return dict(retrained["arch"])
    fc_weight = retrained["model"].get("fc.weight")
    n_classes = fc_weight.shape[0] if fc_weight is not None else opts.nClasses or None
    return {**models.arch_from_opts(opts), "nClasses": n_classes}


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile, or a StartError where this platform cannot compile."""
    compilers = (os.environ.get("CXX"), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(c and shutil.which(c) for c in compilers):
        raise StartError(
            "-compile true needs a C++ compiler on the CPU (apt-get install g++);"
            " or run without -compile"
        )
    print("=> Compiling the model with torch.compile (the first iterations are slow)")
    return torch.compile(model)


def intended_arch(opts, classes: list[str], file_arch: dict | None) -> dict:
    """The network this run trains: from -retrain's file (file_arch) if given, else the flags."""
    arch = dict(file_arch) if file_arch else models.arch_from_opts(opts)
    if opts.resetClassifier:
        arch["nClasses"] = opts.nClasses
    elif not file_arch and opts.dataset == "imagenet" and not opts.nClasses:
        arch["nClasses"] = len(classes)  # any class-per-folder data set, not only ImageNet-1k
    return arch


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict(strict=True), with torchvision names accepted, or a one-line error."""
    state_dict = checkpoints.clean_state_dict(state_dict)
    if "conv1.weight" in state_dict:
        state_dict = models.from_torchvision(state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise checkpoints.CheckpointError(
            f"the weights in {source} do not fit this network ({detail}); pass the options"
            " it was trained with"
        ) from None


def build_model(opts, classes, checkpoint, retrained) -> tuple[nn.Module, dict]:
    """The model to train (fresh, retrained or resumed) and the arch it is saved under."""
    file_arch = retrained_arch(opts, retrained) if retrained else None
    arch = intended_arch(opts, classes, file_arch)
    if checkpoint:
        saved = checkpoint["model"]["arch"]
        differing = {k: (saved.get(k), v) for k, v in arch.items() if saved.get(k) != v}
        if differing:
            listed = ", ".join(f"{k} {old} (asked: {new})" for k, (old, new) in differing.items())
            raise checkpoints.CheckpointError(
                f"{opts.resume} holds a checkpoint of another network: {listed}; resume with"
                " its options or choose another -resume folder"
            )
        print(f"=> Resuming model from {checkpoint['modelPath']}")
        model = models.create(**saved)
        load_weights(model, checkpoint["model"]["model"], checkpoint["modelPath"])
        return model, saved
    print(f"=> Creating model from file: models/{arch['netType']}.py")
    for line in models.describe(**arch):
        print(line)
    if retrained:
        print(f"Loading model from file: {opts.retrain}")
        model = models.create(**file_arch)
        load_weights(model, retrained["model"], opts.retrain)
        if opts.resetClassifier:
            print(f" => Replacing classifier with {opts.nClasses}-way classifier")
            models.replace_classifier(model, opts.nClasses)
        return model, arch
    return models.create(**arch), arch


def check_classes(model: nn.Module, classes: list[str]) -> None:
    """The classifier must have an output for every class of the data."""
    outputs = model.fc.out_features
    if outputs < len(classes):
        raise StartError(
            f"the network has {outputs} outputs but the data has {len(classes)} classes;"
            f" use -resetClassifier true -nClasses {len(classes)}"
        )


def learning_rate_schedule(opts):
    """The Lua's schedule for this dataset and netType, as a function of the epoch."""
    if opts.dataset == "imagenet":
        return lambda epoch: train.step_lr(epoch, opts.LR)
    if opts.dataset != "fashionmnist" and opts.netType != "resnext":
        return lambda epoch: train.milestone_lr(epoch, opts.LR)
    # ResNeXt's rule; also Fashion-MNIST's, whose epochs are not tied to the 164 of fb's.
    return lambda epoch: train.relative_lr(epoch, opts.LR, opts.nEpochs)


def make_optimizer(model: nn.Module, opts, checkpoint) -> torch.optim.Optimizer:
    """Nesterov SGD with weight decay on every parameter; state from -resume or -optimState."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=opts.LR,
        momentum=opts.momentum,
        dampening=0.0,
        weight_decay=opts.weightDecay,
        nesterov=True,
    )
    state = checkpoint["optimState"] if checkpoint else None
    if state is None and opts.optimState != "none":
        state = checkpoints.load_file(opts.optimState)
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise checkpoints.CheckpointError(
                f"optimizer state does not fit this network: {exc}"
            ) from None
    return optimizer


def write_options(opts, arch: dict) -> None:
    """Create -save and write the resolved options to <save>/opts.json."""
    try:
        os.makedirs(opts.save, exist_ok=True)
    except OSError as exc:
        raise StartError(
            f"unable to create checkpoint directory: {opts.save} ({exc.strerror})"
        ) from None
    text = json.dumps({**vars(opts), "arch": arch}, indent=2)
    checkpoints.atomic_write(os.path.join(opts.save, "opts.json"), lambda f: f.write(text.encode()))


def rng_state() -> dict:
    """The generators' states a resumed run restores (torch CPU, CUDA, Python)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what rng_state() saved (parts absent on this machine are skipped)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """Remembers SIGTERM / SIGINT so that training saves and stops between iterations;
    in a distributed run, every process stops at the same iteration (agreed)."""

    def __init__(self, processes: Processes | None = None):
        self.signal_number = None
        self.processes = processes or Processes()

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a small all-reduce when distributed)."""
        if self.processes.world == 1:
            return self()
        flag = torch.tensor([int(self())])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.processes.control)
        stopping = bool(flag.item())
        if stopping and self.signal_number is None:
            self.signal_number = signal.SIGTERM  # another process got the signal
        return stopping

    def install(self) -> None:
        """Catch SIGTERM and SIGINT from now on."""
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self.handle)

    def handle(self, number, _frame) -> None:
        self.signal_number = number

    def __call__(self) -> bool:
        return self.signal_number is not None


class EpochLoop:
    """The Lua's epoch loop (train, test, remember the best top-1, save) made resumable:
    checkpoints every -checkpointEvery iterations and on SIGTERM / SIGINT."""

    def __init__(self, opts, trainer, loaders, arch, classes, checkpoint, processes=None):
        self.opts, self.trainer, self.arch, self.classes = opts, trainer, arch, classes
        self.train_loader, self.val_loader = loaders
        self.processes = processes or Processes()
        self.stop = StopRequest(self.processes)
        self.best = (math.inf, math.inf)
        self.epoch, self.start = opts.epochNumber, 0
        if checkpoint:
            self.best = (checkpoint["bestTop1"], checkpoint["bestTop5"])
            finished = checkpoint["iteration"] == 0
            self.epoch = checkpoint["epoch"] + (1 if finished else 0)
            self.start = 0 if finished else checkpoint["iteration"]

    def save(self, epoch: int, iteration: int = 0, is_best: bool = False) -> None:
        """Checkpoint after `epoch` (iteration 0) or after an iteration inside it; only
        rank 0 writes (every rank holds the same weights)."""
        if self.processes.rank != 0:
            return
        checkpoints.save(
            self.opts.save, epoch, self.trainer.model, self.trainer.optimizer.state_dict(),
            arch=self.arch, classes=self.classes, is_best=is_best, best=self.best,
            iteration=iteration, keep=self.opts.keepCheckpoints,
            state={"rng": rng_state(), "scaler": self.trainer.scaler.state_dict()},
        )  # fmt: skip

    def after_step(self, epoch: int, iteration: int) -> None:
        """Periodic and requested mid-epoch checkpoints."""
        every, stopping = self.opts.checkpointEvery, self.stop.agreed()
        if stopping or (every and iteration % every == 0):
            self.trainer.check_finite()  # never checkpoint weights a NaN has reached
            self.save(epoch, iteration)
        if stopping:
            raise train.Interrupted(f"at epoch {epoch}, iteration {iteration}")

    def run(self) -> None:
        """Epochs from the start (or resume) point to -nEpochs."""
        self.stop.install()
        for epoch in range(self.epoch, self.opts.nEpochs + 1):
            start, self.start = self.start, 0
            datasets.set_epoch(self.train_loader, epoch, start * self.opts.batchSize)
            self.trainer.train(epoch, self.train_loader, start=start, on_step=self.after_step)
            precise_bn(self.opts, self.trainer, self.train_loader, epoch)
            datasets.set_epoch(self.val_loader, epoch)
            try:
                top1, top5 = self.trainer.test(epoch, self.val_loader, stop=self.stop)
            except train.Interrupted:
                self.save(epoch, len(self.train_loader))  # trained, not yet tested
                raise
            is_best = top1 < self.best[0]
            if is_best:
                self.best = (top1, top5)
                print(" * Best model ", f"{top1:.14g}", f"{top5:.14g}", sep="\t")
            self.save(epoch, is_best=is_best)
            if self.stop.agreed():
                raise train.Interrupted(f"after epoch {epoch}")
        print(f" * Finished top1: {self.best[0]:6.3f}  top5: {self.best[1]:6.3f}")


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
    """Say once what -LR the linear scaling rule gives when the batch is not the recipe's."""
    reference = REFERENCE_BATCH.get(opts.dataset, 128)
    suggested = 0.1 * opts.batchSize / reference
    if opts.batchSize != reference and not math.isclose(opts.LR, suggested):
        print(
            f"=> Note: -batchSize {opts.batchSize} is not the recipe's {reference}; the linear"
            f" scaling rule suggests -LR {suggested:g} (0.1 x {opts.batchSize}/{reference})"
        )


def run(opts) -> int:
    """Everything after parsing, in each process of a torchrun job (or the only one)."""
    world = torchrun_world()
    if opts.batchSize % world:
        raise StartError(
            f"-batchSize {opts.batchSize} (the global batch) does not divide among {world}"
            f" processes; use a multiple of {world}"
        )
    processes = start_processes(opts.nGPU)
    try:
        return run_process(opts, processes)
    finally:
        if processes.world > 1:
            dist.destroy_process_group()


def run_process(opts, processes: Processes) -> int:
    """Validate, build, then train or test."""
    device = select_device(opts.nGPU, processes)
    precision_settings(opts.precision, device)  # a bad combination fails before any work
    configure_backends(opts.cudnn)
    configure_host_allocator(opts.hostAllocator)  # before loader workers fork: they inherit it
    torch.manual_seed(opts.manualSeed)
    with torch.device("meta"):
        models.create(**{**models.arch_from_opts(opts), "nClasses": opts.nClasses or 1})
    checkpoint = None
    if opts.resume != "none":
        checkpoint = checkpoints.latest(opts.resume)
        if checkpoint is None:
            print(f"=> No checkpoint in {opts.resume}: training starts from scratch")
        else:
            print(f"=> Loading checkpoint {os.path.join(opts.resume, checkpoints.LATEST)}")
            restore_rng_state(checkpoint["state"].get("rng", {}))
    retrained = checkpoints.load_model_file(opts.retrain) if opts.retrain != "none" else None
    linear_scaling_note(opts)
    loaders = datasets.create_loaders(opts, device, processes.rank, processes.world)
    try:
        return train_or_test(opts, device, loaders, checkpoint, retrained, processes)
    finally:
        for loader in loaders:
            datasets.close(loader)


def prepare_model(opts, model: nn.Module, device: torch.device, dtype, world: int) -> nn.Module:
    """-optnet, then device, dtype and layout, then -syncBN and DistributedDataParallel
    (torchrun) or DataParallel (-nGPU > 1), then -compile."""
    if opts.shareGradInput or opts.optnet:
        print("=> Recomputing residual blocks in the backward pass to save memory (-optnet)")
        models.set_activation_checkpointing(model)
    model = model.to(device, dtype).to(memory_format=CHANNELS_LAST[opts.memoryFormat])
    if world > 1:
        if opts.syncBN:
            print("=> Batch normalisation over the global batch (-syncBN)")
            model = sync_batchnorm.convert(model)
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    elif device.type == "cuda" and opts.nGPU > 1:
        model = nn.DataParallel(model, device_ids=list(range(opts.nGPU)))
    if opts.compile:
        model = compile_model(model, device)
    return model


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """values summed over the processes of the distributed run."""
    dist.all_reduce(values)
    return values


def make_trainer(opts, model, device, checkpoint, world: int, progress=None) -> train.Trainer:
    """The Trainer for the options, with the optimizer and loss scale of -resume."""
    dtype, autocast_dtype = precision_settings(opts.precision, device)
    model = prepare_model(opts, model, device, dtype, world)
    trainer = train.Trainer(
        model,
        nn.CrossEntropyLoss(),
        make_optimizer(model, opts, checkpoint),
        learning_rate_schedule(opts),
        device=device,
        n_crops=10 if opts.tenCrop else 1,
        memory_format=CHANNELS_LAST[opts.memoryFormat],
        dtype=dtype,
        autocast_dtype=autocast_dtype,
        print_every=opts.printFreq,
        reduce=sum_over_processes if world > 1 else None,
        progress=progress,
    )
    if checkpoint and checkpoint["state"].get("scaler"):
        trainer.scaler.load_state_dict(checkpoint["state"]["scaler"])  # fp16 loss scale
    return trainer


def train_or_test(opts, device, loaders, checkpoint, retrained, processes: Processes) -> int:
    """Build the model and trainer on the loaders' classes, then train or test."""
    classes = list(loaders[0].dataset.classes)
    model, arch = build_model(opts, classes, checkpoint, retrained)
    check_classes(model, classes)
    bar = sys.stdout.isatty()  # on a terminal: progress bars; else the Lua's lines
    if opts.testOnly:
        trainer = make_trainer(opts, model, device, checkpoint, processes.world,
                               train.Progress(bar=bar))  # fmt: skip
        precise_bn(opts, trainer, loaders[0], max(opts.epochNumber, 1))
        top1, top5 = trainer.test(0, loaders[1])
        print(f" * Results top1: {top1:6.3f}  top5: {top5:6.3f}")
        return 0
    records = None
    if processes.rank == 0:
        write_options(opts, arch)
        records = train.RunRecords(opts.save, len(loaders[0]), tensorboard=opts.tensorboard,
                                   options={**vars(opts), "arch": arch})  # fmt: skip
    trainer = make_trainer(opts, model, device, checkpoint, processes.world,
                           train.Progress(bar=bar, record=records))  # fmt: skip
    loop = EpochLoop(opts, trainer, loaders, arch, classes, checkpoint, processes)
    try:
        loop.run()
    except train.Interrupted as exc:
        number = loop.stop.signal_number
        print(
            f"=> Stopped by {signal.Signals(number).name} {exc}; checkpoint saved."
            f" Continue with -resume {opts.save}"
        )
        return 128 + number
    finally:
        if records is not None:
            records.close()
    return 0


def one_line(exc: BaseException) -> str:
    """The message of exc on one line; for an error raised in a loader worker, its own."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # DataLoader re-raises with the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"no space left on device ({exc.filename or text}); the previous checkpoints are intact"
        )
    return " ".join(text.split())


def resource_error(exc: RuntimeError) -> str | None:
    """What to do when memory runs out or a loader worker dies (None for other errors)."""
    text = one_line(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text:
        _, allocator, detail = text.partition("DefaultCPUAllocator")  # past "[enforce fail ..."
        text = allocator + detail if allocator else text
        return (f"out of memory ({text[:200]}): lower -batchSize, or use -optnet true or"
                " -precision bf16; the checkpoints are intact")  # fmt: skip
    if text.startswith("DataLoader worker"):
        return (f"a data loader worker died ({text[:200]}): it ran out of memory or shared"
                " memory (in Docker: --shm-size or --ipc=host); lower -nThreads or -batchSize;"
                " the checkpoints are intact: rerun with -resume")  # fmt: skip
    return None


def main(argv=None) -> int:
    """Entry point: one 'error:' line and exit status 2 for every bad input."""
    try:
        return run(options.parse(argv))
    except (options.UsageError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if (message := resource_error(exc)) is not None:
            print(f"error: {message}", file=sys.stderr)
            return 1
        if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            print(f"error: torch.compile failed ({one_line(exc)[:300]}); run without -compile",
                  file=sys.stderr)  # fmt: skip
            return 1
        if not (isinstance(exc, dist.DistError) or torchrun_world() > 1):
            raise
        print(f"error: another process of this distributed job failed ({one_line(exc)[:300]});"
              " the checkpoints are intact: rerun with -resume", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
