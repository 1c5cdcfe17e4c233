"""Checkpoint files (the Lua's checkpoints.lua): per-epoch (and mid-epoch) model and
optimizer files, model_best.pth, and the latest.pth pointer, written last, that also holds
the epoch, iteration, best errors and the run's RNG state for an exact resume.

Every file holds only tensors and primitives and is read with weights_only=True; the
model is saved unwrapped (no 'module.' or '_orig_mod.' prefixes), so a bare model loads it.
"""

import errno
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch
from torch import nn

from errors import UsageError, first_line, quoted

LATEST = "latest.pth"
BEST = "model_best.pth"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
EPOCH_FILE = re.compile(r"^(model|optimState)_(\d+)(_iter\d+)?\.pth$")
# What a run of this tool writes in its -save folder (besides the tb/ folder).
RUN_RECORDS = ("opts.json", "metrics.jsonl", "trackers.json")
RECORDS_FOLDER = "tb"
# A shared model (scripts/export.py): weights as safetensors, what they are in its metadata
# (each value JSON), and a Hugging Face Hub folder holding such a file.
SAFETENSORS_FORMAT = "fb.resnet.pytorch model"
HUB_WEIGHTS = "model.safetensors"
# Fault injection for the crash tests: SIGKILL this process just before the file of
# this name is renamed into place, i.e. in the middle of writing a checkpoint.
KILL_BEFORE_RENAME = "CHECKPOINT_KILL_BEFORE_RENAME"


class CheckpointError(UsageError):
    """A checkpoint that is missing, broken or not ours; main prints one 'error:' line."""


def file_names(epoch: int, iteration: int = 0) -> tuple[str, str]:
    """(model file, optimizer file) saved after `epoch`, or mid-epoch after `iteration`."""
    suffix = f"{epoch}" if iteration == 0 else f"{epoch}_iter{iteration}"
    return f"model_{suffix}.pth", f"optimState_{suffix}.pth"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside wrappers: DataParallel, DistributedDataParallel and any other
    that holds it as `.module`, and torch.compile's."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes ('module.', '_orig_mod.') from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def fsync_directory(folder: str) -> None:
    """Make renames in folder durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_save(obj, path: str) -> None:
    """torch.save obj to path atomically (see atomic_write). The file is serialised in
    memory first: torch's writer turns a failed write (a full disk) into an opaque
    RuntimeError, a plain write gives the OSError with its errno."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda stream: stream.write(buffer.getbuffer()))


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """write() into a temporary file in the same folder, fsync, then rename over path."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(prefix=".partial-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if os.environ.get(KILL_BEFORE_RENAME) == os.path.basename(path):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(partial, path)
    except BaseException as exc:
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(exc, OSError) and exc.filename is None:  # name the file in the error
            raise OSError(exc.errno, exc.strerror or errno.errorcode.get(exc.errno), path) from None
        raise
    fsync_directory(folder)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's state_dict on the CPU, with no wrapper prefixes."""
    return {k: v.detach().cpu() for k, v in clean_state_dict(unwrap(model).state_dict()).items()}


def model_record(
    model: nn.Module,
    epoch: int,
    arch: dict,
    classes: list[str],
    average: dict | None = None,
    evaluation: dict | None = None,
) -> dict:
    """What a model file holds: CPU weights, the network's arguments, the class names, the
    averaged weights of -ema ({"model": state_dict, "updates": n, "decay": d, "every": k})
    and how its images are prepared for evaluation ({"resize": short side, "crop": side})
    when given."""
    record = {
        "model": cpu_state(model),
        "arch": dict(arch),
        "classes": list(classes),
        "epoch": epoch,
    }
    if evaluation is not None:
        record["evaluation"] = dict(evaluation)
    if average is not None:
        weights = {k: v.detach().cpu() for k, v in average["model"].items()}
        record["ema"] = {"model": weights, "updates": int(average["updates"])}
        record["ema"].update({k: average[k] for k in ("decay", "every") if k in average})
    return record


# What a model file records of how its val images were prepared (datasets.DataSpec's
# evaluation_sizes), with the type of each.
EVALUATION = {"resize": int, "crop": int, "interpolation": str}
# -valInterpolation's choices (opts.INTERPOLATIONS: the parser imports no torch, this module
# no parser; tests/test_architecture.py holds the two equal).
INTERPOLATIONS = ("bicubic", "bilinear")


def check_weights(weights: Mapping, path: str) -> None:
    """A CheckpointError naming the first entry of a state_dict that is not a tensor by a
    name (a file from someone else can hold anything a plain pickle allows)."""
    for key, value in weights.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise CheckpointError(f"{path} holds {quoted(key)}: {quoted(value, 60)} among its"
                                  " weights, where a tensor by name belongs")  # fmt: skip


def checked_classes(classes, path: str) -> list | None:
    """A model file's class names: a list of names (or numbers), else a CheckpointError."""
    if classes is None or (
        isinstance(classes, list)
        and all(isinstance(name, str | int) and not isinstance(name, bool) for name in classes)
    ):
        return classes
    raise CheckpointError(f"{path} records its classes as {quoted(classes)}, not a list of names")


def checked_evaluation(evaluation, path: str) -> dict | None:
    """A model file's record of how its val images were prepared, which may come from someone
    else: only the keys this tool writes, of their types, a crop of at least 32 within the
    resize (what main.py's -valCrop and -valResize take); else a CheckpointError naming it."""
    if evaluation is None:
        return None
    if not isinstance(evaluation, Mapping):
        raise CheckpointError(f"{path} records its evaluation as {quoted(evaluation)}, not as"
                              " resize, crop and interpolation")  # fmt: skip
    for key, value in evaluation.items():
        wanted = EVALUATION.get(key)
        if wanted is None or not isinstance(value, wanted) or isinstance(value, bool):
            raise CheckpointError(
                f"{path} records an evaluation setting {quoted(key)}: {quoted(value)}; this"
                " tool records resize and crop (whole numbers) and interpolation (a name)"
            )
    crop, resize = evaluation.get("crop", 224), evaluation.get("resize", 256)
    interpolation = evaluation.get("interpolation", INTERPOLATIONS[0])
    if not 32 <= crop <= resize or interpolation not in INTERPOLATIONS:
        raise CheckpointError(
            f"{path} records an evaluation crop of {crop} after a {quoted(interpolation)} resize"
            f" to {resize}: a crop is at least 32 and at most the resize, the interpolation one"
            f" of {', '.join(INTERPOLATIONS)}"
        )
    return dict(evaluation)


@dataclass(frozen=True)
class ModelFile:
    """A model file read back (or published weights fetched): the trained weights and what
    they are. A bare state_dict has no arch and no classes."""

    weights: dict  # the trained state_dict
    path: str  # where it was read from (or the -weights name it was fetched as)
    arch: dict | None = None  # models.create()'s arguments
    classes: list | None = None
    average: dict | None = None  # -ema's {"model": state_dict, "updates", "decay", "every"}
    evaluation: dict | None = None  # how its val images were prepared (resize, crop, ...)
    fetched: bool = False  # published weights by name, not a file the user named
    epoch: int | None = None  # the epoch it was saved at

    @classmethod
    def of(cls, record: Mapping, path: str) -> "ModelFile":
        """The model file of a record as model_record() writes it."""
        average = record.get("ema")
        if not (isinstance(average, dict) and isinstance(average.get("model"), dict)):
            average = None
        epoch = record.get("epoch")
        check_weights(record["model"], path)
        if average is not None:
            check_weights(average["model"], path)
        return cls(
            record["model"],
            path,
            record.get("arch"),
            checked_classes(record.get("classes"), path),
            average,
            checked_evaluation(record.get("evaluation"), path),
            epoch=epoch if isinstance(epoch, int) else None,
        )

    def evaluated(self) -> tuple[dict, bool]:
        """The weights it is evaluated with: its averaged (-ema) weights when it has them,
        else its trained ones; and whether they are the averaged ones."""
        if self.average is not None:
            return self.average["model"], True
        return self.weights, False

    def outputs(self) -> int | None:
        """The width of its classifier (None when it has no fc layer)."""
        fc_weight = self.weights.get("fc.weight")
        return None if fc_weight is None else fc_weight.shape[0]


@dataclass(frozen=True)
class RunState:
    """What latest.pth keeps of the run beside the files: every rank's random generators,
    fp16's loss scale, the frozen settings, and mid-epoch the epoch's training sums and
    what its order was an order of (datasets.order_of: a resume continues in it)."""

    rng: dict | None = None
    scaler: dict | None = None
    frozen: tuple[int, bool] = (-1, False)
    epoch_sums: object | None = None
    order: str | None = None

    @classmethod
    def of(cls, stored: Mapping) -> "RunState":
        """The run state as latest.pth stores it (record())."""
        return cls(stored.get("rng", {}), stored.get("scaler"),
                   tuple(stored.get("frozen", (-1, False))), stored.get("epochSums"),
                   stored.get("order"))  # fmt: skip

    def record(self) -> dict:
        """As latest.pth stores it."""
        state = {"rng": self.rng or {}, "scaler": self.scaler, "frozen": list(self.frozen)}
        if self.epoch_sums is not None:
            state["epochSums"] = self.epoch_sums
        if self.order is not None:
            state["order"] = self.order
        return state


@dataclass(frozen=True)
class Scores:
    """The test errors a run has reached: the best top-1 (with its top-5) and its epoch, and
    the last tested epoch's top-1 (the Lua's ' * Finished' line gives only the best)."""

    best: tuple[float, float] = (math.inf, math.inf)
    best_epoch: int | None = None  # None: written before epochs were recorded
    last: tuple[int, float] | None = None  # (epoch, top-1) of the last epoch tested

    @classmethod
    def of(cls, stored: Mapping) -> "Scores":
        """The scores as latest.pth stores them (record())."""
        last = (stored["lastEpoch"], stored["lastTop1"]) if "lastEpoch" in stored else None
        best = (stored.get("bestTop1", math.inf), stored.get("bestTop5", math.inf))
        return cls(best, stored.get("bestEpoch"), last)

    def record(self) -> dict:
        """As latest.pth stores them."""
        stored = {"bestTop1": self.best[0], "bestTop5": self.best[1]}
        if self.best_epoch is not None:
            stored["bestEpoch"] = self.best_epoch
        if self.last is not None:
            stored["lastEpoch"], stored["lastTop1"] = self.last
        return stored

    def tested(self, epoch: int, top1: float, top5: float) -> "Scores":
        """These scores after testing epoch: its errors become the best if lower."""
        if top1 < self.best[0]:
            return Scores((top1, top5), epoch, (epoch, top1))
        return Scores(self.best, self.best_epoch, (epoch, top1))


@dataclass(frozen=True)
class Checkpoint:
    """The point a -resume run continues from: latest.pth and the files it names."""

    epoch: int
    iteration: int  # 0: the epoch is finished
    samples: int | None  # images of the epoch's order trained (None: written before that)
    model: ModelFile
    optimizer: dict  # the optimizer's state_dict
    scores: Scores  # the best and last test errors so far
    state: RunState


def save(
    save_dir: str,
    record: dict,
    optimizer_state: dict,
    *,
    scores: Scores,
    is_best: bool = False,
    position: tuple[int, int] = (0, 0),
    state: RunState | None = None,
    keep: int = 0,
) -> None:
    """Write the model file (a model_record()) and the optimizer file of record's epoch,
    or mid-epoch where position = (iteration, samples of the epoch's order used) says;
    model_best.pth if is_best, then latest.pth last, so that a crash at any instant leaves
    the previous consistent set; then drop files no longer needed (keep: last K epochs)."""
    epoch, (iteration, samples) = record["epoch"], position
    model_name, optim_name = file_names(epoch, iteration)
    atomic_save(record, os.path.join(save_dir, model_name))
    atomic_save(optimizer_state, os.path.join(save_dir, optim_name))
    if is_best:
        atomic_save(record, os.path.join(save_dir, BEST))
    latest_record = {
        "epoch": epoch,
        "iteration": iteration,
        "samples": samples,
        "modelFile": model_name,
        "optimFile": optim_name,
        **scores.record(),
        "state": (state or RunState()).record(),
    }
    atomic_save(latest_record, os.path.join(save_dir, LATEST))
    prune(save_dir, {model_name, optim_name}, keep)


def prune(save_dir: str, current: set[str], keep: int) -> None:
    """Delete partial files, mid-epoch files other than `current`, and with keep > 0 the
    per-epoch files of all but the newest `keep` epochs (never `current` nor model_best)."""
    epochs = {}
    for name in os.listdir(save_dir):
        if name.startswith(".partial-"):  # left by a process killed while writing
            os.remove(os.path.join(save_dir, name))
            continue
        match = EPOCH_FILE.match(name)
        if match:
            epochs.setdefault((int(match.group(2)), bool(match.group(3))), []).append(name)
    complete = sorted(epoch for epoch, mid in epochs if not mid)
    stale = set(complete[:-keep]) if keep > 0 else set()
    for (epoch, mid), names in epochs.items():
        if mid or epoch in stale:
            for name in set(names) - current:
                os.remove(os.path.join(save_dir, name))


def run_files(folder: str) -> list[str]:
    """The files a run of this tool wrote in folder (checkpoints, opts.json, metrics.jsonl),
    sorted; [] when there are none or no folder."""
    if not os.path.isdir(folder):
        return []
    names = os.listdir(folder)
    return sorted(n for n in names if is_checkpoint_file(n) or n in RUN_RECORDS)


def is_checkpoint_file(name: str) -> bool:
    """Whether name is one of the checkpoint files this tool writes."""
    return name in (LATEST, BEST) or bool(EPOCH_FILE.match(name))


def clear_run(folder: str) -> None:
    """Delete the files of an earlier run in folder (what run_files lists, and tb/)."""
    for name in run_files(folder):
        os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(folder, RECORDS_FOLDER), ignore_errors=True)


def newest_model_file(folder: str) -> str | None:
    """The model file of the latest epoch (mid-epoch files after their epoch's start) in
    folder, else model_best.pth, else None."""
    epochs = {}
    for name in os.listdir(folder):
        match = EPOCH_FILE.match(name)
        if match and match.group(1) == "model":
            iteration = int(match.group(3)[5:]) if match.group(3) else 0
            epochs[name] = (int(match.group(2)), iteration == 0, iteration)
    if epochs:
        return max(epochs, key=epochs.get)
    return BEST if os.path.isfile(os.path.join(folder, BEST)) else None


def unwritable(path: str) -> str | None:
    """Why a folder at path (created if missing) could not hold files, or None if it can."""
    full = os.path.abspath(path)
    name_max = os.pathconf("/", "PC_NAME_MAX")
    if len(os.fsencode(full)) > os.pathconf("/", "PC_PATH_MAX") - name_max:
        return "the path is too long for this system"
    if any(len(os.fsencode(part)) > name_max for part in full.split(os.sep)):
        return f"a folder name in it is longer than {name_max} bytes"
    existing = full
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        return (
            f"{existing} is on a read-only file system"
            if read_only
            else f"{existing} is not writable"
        )
    return None


def same_folder(first: str, second: str) -> bool:
    """Whether two paths name the same folder."""
    return os.path.realpath(first) == os.path.realpath(second)


def check_run_folder(save: str, resume: str, overwrite: bool) -> None:
    """A run's -save must be able to hold files, and may hold another run only when this
    run continues it (-resume of the same folder) or replaces it (-overwrite true)."""
    problem = unwritable(save)
    if problem:
        raise CheckpointError(f"cannot save in -save {save}: {problem}; choose another -save")
    resuming = resume != "none" and same_folder(resume, save)
    if resuming and overwrite:
        raise CheckpointError(
            "-overwrite true would delete the run that -resume continues; give one of them"
        )
    found = run_files(save)
    if found and not resuming and not overwrite:
        listed = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        raise CheckpointError(
            f"-save {save} already holds a run ({listed}): continue it with -resume"
            f" {save}, choose another -save, or replace it with -overwrite true"
        )


class RunFolder:
    """A run's folder, made ready on its first write (never by a run that fails to
    start): created, emptied of an earlier run when overwriting, given opts.json."""

    def __init__(self, folder: str, overwrite: bool, options: dict):
        self.folder, self.overwrite, self.options = folder, overwrite, options
        self.ready = False

    def __call__(self) -> None:
        if self.ready:
            return
        os.makedirs(self.folder, exist_ok=True)
        if self.overwrite and run_files(self.folder):
            clear_run(self.folder)
            print(f"=> -overwrite true: deleted the earlier run in {self.folder}")
        text = json.dumps(self.options, indent=2).encode()
        atomic_write(os.path.join(self.folder, "opts.json"), lambda handle: handle.write(text))
        self.ready = True


def load_file(path: str):
    """torch.load with weights_only=True onto the CPU, or CheckpointError naming the file."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: give a file in it")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a plain checkpoint (refused: {first_line(exc)})"
        ) from None
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint ({first_line(exc)})"
        ) from None


def latest_of_run(resume_dir: str) -> Checkpoint | None:
    """-resume's checkpoint, said on one line; None (said too when there is a folder) to
    start afresh."""
    if resume_dir == "none":
        return None
    if not os.path.isdir(resume_dir):  # -save's own folder, not made yet (opts checks)
        print(f"=> No run in {resume_dir} yet: training starts from scratch")
        return None
    checkpoint = latest(resume_dir)
    if checkpoint is None:
        print(f"=> No checkpoint in {resume_dir}: training starts from scratch")
        return None
    print(f"=> Loading checkpoint {os.path.join(resume_dir, LATEST)}")
    return checkpoint


def latest(resume_dir: str) -> Checkpoint | None:
    """The checkpoint latest.pth points to, or None when the folder has no checkpoint; a
    folder with model files but no (readable) latest.pth is a CheckpointError."""
    pointer = os.path.join(resume_dir, LATEST)
    if not os.path.isfile(pointer):
        newest = newest_model_file(resume_dir)
        if newest is not None:
            broken = "a broken link" if os.path.islink(pointer) else "missing"
            raise CheckpointError(
                f"{resume_dir} holds model files but its {LATEST} is {broken}, so there is no"
                f" point to resume from; start from weights with -retrain"
                f" {os.path.join(resume_dir, newest)}, or start afresh in another -save"
            )
        return None
    record = load_file(pointer)
    required = {"epoch": int, "modelFile": str, "optimFile": str}
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), kind) for k, kind in required.items()
    ):
        raise CheckpointError(
            f"{pointer} is not a latest.pth written by this tool (it lacks"
            f" {', '.join(required)}); resume from another folder or -retrain a model file"
        )
    for key in ("modelFile", "optimFile"):  # names of this tool's files beside latest.pth
        if not EPOCH_FILE.match(record[key]):
            raise CheckpointError(
                f"{pointer} names {quoted(record[key])} as its {key}, not a model_N.pth /"
                " optimState_N.pth file beside it: not a latest.pth written by this tool"
            )
    model_path = os.path.join(resume_dir, record["modelFile"])
    model = load_file(model_path)
    if not isinstance(model, dict) or "arch" not in model or "model" not in model:
        raise CheckpointError(f"{model_path} is not a model file written by this tool")
    return Checkpoint(
        epoch=record["epoch"],
        iteration=record.get("iteration", 0),
        samples=record.get("samples"),
        model=ModelFile.of(model, model_path),
        optimizer=load_file(os.path.join(resume_dir, record["optimFile"])),
        scores=Scores.of(record),
        state=RunState.of(record.get("state", {})),
    )


def load_model_file(path: str) -> ModelFile:
    """A model file: ours as saved, or exported as safetensors (also a Hub folder holding
    one); a bare state_dict (.pth or .safetensors) gets no arch."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, HUB_WEIGHTS)):
        path = os.path.join(path, HUB_WEIGHTS)
    if path.endswith(".safetensors") and os.path.isfile(path):
        return read_safetensors(path)
    content = load_file(path)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        return ModelFile.of(content, path)
    if isinstance(content, dict) and content and all(torch.is_tensor(v) for v in content.values()):
        return ModelFile(clean_state_dict(content), path)
    raise CheckpointError(f"{path} holds neither a model record nor a state_dict")


def write_safetensors(path: str, model: ModelFile, preprocessing: Mapping) -> None:
    """model's evaluated weights (-ema's when it has them) as a safetensors file whose
    metadata says what they are: network, classes, epoch, how images are prepared;
    written to a temporary name first."""
    from safetensors.torch import save  # an optional package (pip install safetensors)

    weights, averaged = model.evaluated()
    tensors = {key: value.detach().cpu().contiguous() for key, value in weights.items()}
    metadata = {
        "format": "pt",
        "producer": SAFETENSORS_FORMAT,
        "arch": json.dumps(model.arch),
        "classes": json.dumps(model.classes),
        "evaluation": json.dumps(model.evaluation),
        "preprocessing": json.dumps(dict(preprocessing)),
        "epoch": json.dumps(model.epoch),
        "weights": json.dumps("ema" if averaged else "trained"),
    }
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))
    os.chmod(path, 0o644)  # a file to share (a run's own files stay the user's alone)


def read_safetensors(path: str) -> ModelFile:
    """A safetensors file: exported by write_safetensors (its network and classes with it),
    or any other (a bare state_dict, timm's model.safetensors)."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs safetensors: pip install safetensors"
        ) from None
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own errors for damaged files
        raise CheckpointError(
            f"{path} is truncated or not a safetensors file ({first_line(exc)})"
        ) from None
    if metadata.get("producer") != SAFETENSORS_FORMAT:
        return ModelFile(clean_state_dict(weights), path)
    try:
        described = {
            key: json.loads(metadata[key]) for key in ("arch", "classes", "evaluation", "epoch")
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: its metadata is damaged ({exc})") from None
    evaluation = checked_evaluation(described["evaluation"], path)
    return ModelFile(weights, path, described["arch"], described["classes"],
                     evaluation=evaluation, epoch=described["epoch"])  # fmt: skip


def safetensors_metadata(path: str) -> dict:
    """The JSON values of an exported safetensors file's metadata (preprocessing, ...)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {
        key: json.loads(value)
        for key, value in metadata.items()
        if key not in ("format", "producer")
    }
