"""Checkpoint files (the Lua's checkpoints.lua): per-epoch (and mid-epoch) model and
optimizer files, model_best.pth, and the latest.pth pointer, written last, that also holds
the epoch, iteration, best errors and the run's RNG state for an exact resume.

Every file holds only tensors and primitives and is read with weights_only=True; the
model is saved unwrapped (no 'module.' or '_orig_mod.' prefixes), so a bare model loads it.
"""

import os
import pickle
import re
import signal
import tempfile
from collections.abc import Callable, Mapping
from typing import BinaryIO

import torch
from torch import nn

LATEST = "latest.pth"
BEST = "model_best.pth"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
EPOCH_FILE = re.compile(r"^(model|optimState)_(\d+)(_iter\d+)?\.pth$")
# Fault injection for the crash tests: SIGKILL this process just before the file of
# this name is renamed into place, i.e. in the middle of writing a checkpoint.
KILL_BEFORE_RENAME = "CHECKPOINT_KILL_BEFORE_RENAME"


class CheckpointError(ValueError):
    """A checkpoint that is missing, broken or not ours; main prints one 'error:' line."""


def file_names(epoch: int, iteration: int = 0) -> tuple[str, str]:
    """(model file, optimizer file) saved after `epoch`, or mid-epoch after `iteration`."""
    suffix = f"{epoch}" if iteration == 0 else f"{epoch}_iter{iteration}"
    return f"model_{suffix}.pth", f"optimState_{suffix}.pth"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
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
    """torch.save obj to path atomically (see atomic_write)."""
    atomic_write(path, lambda stream: torch.save(obj, stream))


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
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    fsync_directory(folder)


def model_record(model: nn.Module, epoch: int, arch: dict, classes: list[str]) -> dict:
    """What a model file holds: CPU weights, the network's arguments, the class names."""
    state = {k: v.detach().cpu() for k, v in clean_state_dict(unwrap(model).state_dict()).items()}
    return {"model": state, "arch": dict(arch), "classes": list(classes), "epoch": epoch}


def save(
    save_dir: str,
    epoch: int,
    model: nn.Module,
    optimizer_state: dict,
    *,
    arch: dict,
    classes: list[str],
    is_best: bool,
    best: tuple[float, float],
    iteration: int = 0,
    state: dict | None = None,
    keep: int = 0,
) -> None:
    """Write the model and optimizer files (per epoch, or mid-epoch after `iteration`),
    model_best.pth if best, then latest.pth last, so that a crash at any instant leaves
    the previous consistent set; then drop files no longer needed (keep: last K epochs)."""
    record = model_record(model, epoch, arch, classes)
    model_name, optim_name = file_names(epoch, iteration)
    atomic_save(record, os.path.join(save_dir, model_name))
    atomic_save(optimizer_state, os.path.join(save_dir, optim_name))
    if is_best:
        atomic_save(record, os.path.join(save_dir, BEST))
    latest_record = {
        "epoch": epoch,
        "iteration": iteration,
        "modelFile": model_name,
        "optimFile": optim_name,
        "bestTop1": best[0],
        "bestTop5": best[1],
        "state": state or {},
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


def load_file(path: str):
    """torch.load with weights_only=True onto the CPU, or CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} is not a plain checkpoint (refused: {first_line})") from None
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({reason})") from None


def latest(resume_dir: str) -> dict | None:
    """The checkpoint latest.pth points to, or None when the folder has none."""
    pointer = os.path.join(resume_dir, LATEST)
    if not os.path.isfile(pointer):
        return None
    record = load_file(pointer)
    if not isinstance(record, dict) or "modelFile" not in record:
        raise CheckpointError(f"{pointer} is not a latest.pth written by this tool")
    model_path = os.path.join(resume_dir, record["modelFile"])
    model = load_file(model_path)
    if not isinstance(model, dict) or "arch" not in model or "model" not in model:
        raise CheckpointError(f"{model_path} is not a model file written by this tool")
    return {
        "epoch": record["epoch"],
        "iteration": record.get("iteration", 0),
        "model": model,
        "optimState": load_file(os.path.join(resume_dir, record["optimFile"])),
        "bestTop1": record.get("bestTop1", float("inf")),
        "bestTop5": record.get("bestTop5", float("inf")),
        "state": record.get("state", {}),
        "modelPath": model_path,
    }


def load_model_file(path: str) -> dict:
    """A model file as a record: ours as saved; a bare state_dict gets arch None."""
    content = load_file(path)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        return content
    if isinstance(content, dict) and content and all(torch.is_tensor(v) for v in content.values()):
        return {"model": clean_state_dict(content), "arch": None, "classes": None}
    raise CheckpointError(f"{path} holds neither a model record nor a state_dict")
