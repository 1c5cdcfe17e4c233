"""The model a run trains, as the Lua's models/init.lua sets it up: created from its
ModelSpec, or loaded from a -resume checkpoint or a -retrain file, with a new classifier for
-resetClassifier, frozen stages, -optnet, then on its device(s) in its layout."""

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

import checkpoints
import datasets
import models
from models import pretrained
from models.backbone import set_frozen, zero_init_residual
from models.loading import load_weights
from runtime import devices, parallel
from runtime.launch import Processes, StartError


@dataclass(frozen=True)
class ModelSpec:
    """The network a run asks for, where its weights come from, and what is done to it."""

    arch: Mapping  # models.create()'s arguments from the flags (-nClasses: None, the data's)
    reset_classifier: bool = False
    frozen_stages: int = -1
    norm_eval: bool = False
    zero_init_residual: bool = False
    drop_path: float = 0.0  # -dropPath: the last block's stochastic depth rate
    head_dropout: float = 0.0  # -headDropout (0: the network's own)
    recompute: bool = False  # -optnet / -shareGradInput: activation checkpointing
    memory_format: str = "channels_last"
    n_gpu: int = 1
    sync_bn: bool = False
    compile: bool = False
    retrain: str = "none"  # the -retrain file
    weights: "pretrained.Named | None" = None  # -weights resolved: a named network's weights
    val_crop: int = 224  # the side of a folder dataset's val images


def start_arch(spec: ModelSpec, start_file: checkpoints.ModelFile) -> dict:
    """The network of the file training starts from (-retrain's or -weights'): as saved,
    else the flags' with the file's fc width."""
    if start_file.arch:
        return models.complete_arch(start_file.arch, start_file.path)
    return {**dict(spec.arch), "nClasses": start_file.outputs() or spec.arch["nClasses"]}


def intended_arch(spec: ModelSpec, classes: list[str], file_arch: dict | None) -> dict:
    """The network this run trains: from -retrain's file (file_arch) if given, else the flags."""
    arch = dict(file_arch) if file_arch else dict(spec.arch)
    if spec.reset_classifier:
        arch["nClasses"] = spec.arch["nClasses"] or len(classes)
    elif not file_arch and spec.arch["dataset"] == "imagenet" and not spec.arch["nClasses"]:
        arch["nClasses"] = len(classes)  # any class-per-folder data set, not only ImageNet-1k
    return arch


def build_model(
    spec: ModelSpec, classes, checkpoint, start_file, test_only: bool = False
) -> tuple[nn.Module, dict]:
    """The model to train (fresh, fine-tuned from a file or resumed) and the arch it is saved under,
    with -frozenStages and -normEval applied; with test_only, a resumed checkpoint's -ema
    weights when it has them (what it is tested on)."""
    if checkpoint:
        check_frozen_settings(spec, checkpoint)
    elif spec.norm_eval and not start_file:
        raise StartError(
            "-normEval true keeps every BatchNorm at its starting statistics (mean 0, variance"
            " 1) when no weights trained them: it is for fine-tuning; add -retrain FILE or"
            " -weights NAME, or leave -normEval out"
        )
    model, arch = built_model(spec, classes, checkpoint, start_file, test_only)
    if spec.drop_path:
        models.set_drop_path(model, spec.drop_path)
    if spec.head_dropout:
        models.set_head_dropout(model, spec.head_dropout)
    if spec.zero_init_residual and not (checkpoint or start_file):
        zero_init_residual(model)
    set_frozen(model, spec.frozen_stages, spec.norm_eval)
    return model, arch


def check_frozen_settings(spec: ModelSpec, checkpoint) -> None:
    """A resumed run freezes what the run it continues froze (its optimizer holds exactly
    the trainable parameters)."""
    saved = checkpoint.state.frozen
    if tuple(saved) != (spec.frozen_stages, spec.norm_eval):
        flags = f"-frozenStages {saved[0]} -normEval {str(saved[1]).lower()}"
        raise checkpoints.CheckpointError(
            f"{run_folder(checkpoint)} was trained with {flags}; resume with the same flags"
        )


def run_folder(checkpoint) -> str:
    """The -resume folder a checkpoint was read from."""
    return os.path.dirname(checkpoint.model.path)


def built_model(
    spec: ModelSpec, classes, checkpoint, start_file, test_only: bool
) -> tuple[nn.Module, dict]:
    """build_model() before the fine-tuning options."""
    file_arch = start_arch(spec, start_file) if start_file else None
    arch = intended_arch(spec, classes, file_arch)
    if checkpoint:
        saved = models.complete_arch(checkpoint.model.arch, checkpoint.model.path)
        differing = {k: (saved.get(k), v) for k, v in arch.items() if saved.get(k) != v}
        if differing:
            listed = ", ".join(f"{k} {old} (asked: {new})" for k, (old, new) in differing.items())
            raise checkpoints.CheckpointError(
                f"{run_folder(checkpoint)} holds a checkpoint of another network: {listed};"
                " resume with its options or choose another -resume folder"
            )
        weights, averaged = checkpoint.model.weights, False  # training continues these
        if test_only:  # -testOnly evaluates the -ema weights when there are
            weights, averaged = checkpoint.model.evaluated()
        print(f"=> Resuming model from {checkpoint.model.path}" + " (its -ema weights)" * averaged)
        model = models.user_network(saved)
        load_weights(model, weights, checkpoint.model.path)
        return model, saved
    print(f"=> Creating model from file: models/{arch['netType']}.py")
    for line in models.describe(**arch):
        print(line)
    if start_file:
        weights, averaged = start_file.evaluated()
        if not start_file.fetched:  # (-weights said what they are when fetched)
            print(
                f"Loading model from file: {start_file.path}" + (" (its -ema weights)" * averaged)
            )
        model = models.user_network(file_arch)
        load_weights(model, weights, start_file.path)
        crop = (start_file.evaluation or {}).get("crop", datasets.folder_samples.LUA_CROPS.val)
        before = (file_arch["dataset"], crop)
        if note := datasets.input_note(before, (spec.arch["dataset"], spec.val_crop)):
            print(note)
        if spec.reset_classifier:
            print(f" => Replacing classifier with {arch['nClasses']}-way classifier")
            models.replace_classifier(model, arch["nClasses"])
        return model, arch
    return models.create(**arch), arch


def options_record(options: Mapping, arch: Mapping) -> dict:
    """The resolved options and the network, as opts.json and TensorBoard keep them; the
    network flags are those of the network trained (a -retrain file's or a resumed run's,
    not the flags' defaults)."""
    return {
        **options,
        **{flag: arch[flag] for flag in models.ARCH_FLAGS if flag in arch},
        "arch": dict(arch),
    }


def check_classes(
    model: nn.Module, classes: list[str], resumed: checkpoints.ModelFile | None = None
) -> None:
    """The classifier must have an output for every class of the data, and a resumed run
    the classes it was trained on (in that order); more outputs than classes (a -retrain
    file of another data set) is said once."""
    saved = [str(name) for name in (resumed.classes or [])] if resumed else []
    if saved and saved != [str(name) for name in classes]:
        pairs = enumerate(zip(saved, classes, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(saved), len(classes)))
        said = [repr(names[first]) if first < len(names) else "none" for names in (classes, saved)]
        raise StartError(
            f"the data's classes are not those {resumed.path} was trained on ({len(classes)}"
            f" against {len(saved)}; class {first} is {said[0]} in the data, {said[1]} in the"
            " checkpoint): give the data it was trained on, or start from its weights with"
            " -retrain"
        )
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


def prepare_model(
    spec: ModelSpec, model: nn.Module, device: torch.device, dtypes: tuple, world: int
):
    """-optnet, then device, dtype and layout (dtypes: the parameters' and autocast's), then
    the spread over devices and processes (and -compile): (model to train, to evaluate)."""
    if spec.recompute:
        print("=> Recomputing residual blocks in the backward pass to save memory (-optnet)")
        models.set_activation_checkpointing(model)
    dtype, autocast_dtype = dtypes
    model = model.to(device, dtype).to(memory_format=devices.MEMORY_FORMATS[spec.memory_format])
    return parallel.spread_model(
        model,
        device,
        n_gpu=spec.n_gpu,
        world=world,
        autocast_dtype=autocast_dtype,
        sync_bn=spec.sync_bn,
        compile_model=spec.compile,
    )


def start_weights(spec: ModelSpec, checkpoint: dict | None, processes: Processes) -> dict | None:
    """The model record training starts from: -retrain's file, or the named -weights
    (downloaded once: rank 0 first, the others then read the cache), unless resuming a
    checkpoint."""
    if spec.retrain != "none":
        return checkpoints.load_model_file(spec.retrain)
    named = spec.weights
    if named is None or checkpoint is not None:
        return None
    if processes.rank == 0:
        print(pretrained.summary(named))
    return parallel.in_turns(processes, lambda: pretrained.fetch(named, processes.rank == 0))
