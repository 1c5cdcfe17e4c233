"""The model a run trains, as the Lua's models/init.lua sets it up: created from the
options, or loaded from a -resume checkpoint or a -retrain file, with a new classifier for
-resetClassifier, frozen stages, -optnet, then on its device(s) in its layout."""

import torch
from torch import nn

import checkpoints
import datasets
import launch
import models
import parallel
from launch import Processes, StartError
from models import pretrained
from models.loading import load_weights


def retrained_arch(opts, retrained: dict) -> dict:
    """The network of a -retrain file: as saved, else the flags' with the file's fc width."""
    if retrained.get("arch"):
        return models.complete_arch(retrained["arch"])
    fc_weight = retrained["model"].get("fc.weight")
    n_classes = fc_weight.shape[0] if fc_weight is not None else opts.nClasses or None
    return {**models.arch_from_opts(opts), "nClasses": n_classes}


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


def prepare_model(opts, model: nn.Module, device: torch.device, dtypes: tuple, world: int):
    """-optnet, then device, dtype and layout (dtypes: the parameters' and autocast's), then
    the spread over devices and processes (and -compile): (model to train, to evaluate)."""
    if opts.shareGradInput or opts.optnet:
        print("=> Recomputing residual blocks in the backward pass to save memory (-optnet)")
        models.set_activation_checkpointing(model)
    dtype, autocast_dtype = dtypes
    model = model.to(device, dtype).to(memory_format=launch.MEMORY_FORMATS[opts.memoryFormat])
    return parallel.spread_model(model, device, n_gpu=opts.nGPU, world=world,
                                 autocast_dtype=autocast_dtype, sync_bn=opts.syncBN,
                                 compile_model=opts.compile)  # fmt: skip


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
        print(pretrained.summary(named))
    return parallel.in_turns(processes, lambda: pretrained.fetch(named, processes.rank == 0))
