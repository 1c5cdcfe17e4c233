"""Checkpoint files (the Lua's checkpoints.lua): per-epoch model and optimizer state, a
latest.pth pointer written last, and model_best.pth.

Every file holds only tensors and primitives and is read with weights_only=True; the
model is saved unwrapped (no 'module.' or '_orig_mod.' prefixes), so a bare model loads it.
"""

import os
import pickle
import tempfile
from collections.abc import Mapping

import torch
from torch import nn

LATEST = "latest.pth"
BEST = "model_best.pth"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that is missing, broken or not ours; main prints one 'error:' line."""


def model_file(epoch: int) -> str:
    """File name of the model saved after `epoch`."""
    return f"model_{epoch}.pth"


def optim_file(epoch: int) -> str:
    """File name of the optimizer state saved after `epoch`."""
    return f"optimState_{epoch}.pth"


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


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over path."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(prefix=".partial-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


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
) -> None:
    """Write model_<epoch>.pth, optimState_<epoch>.pth, model_best.pth if best, latest.pth last."""
    record = model_record(model, epoch, arch, classes)
    atomic_save(record, os.path.join(save_dir, model_file(epoch)))
    atomic_save(optimizer_state, os.path.join(save_dir, optim_file(epoch)))
    if is_best:
        atomic_save(record, os.path.join(save_dir, BEST))
    latest_record = {
        "epoch": epoch,
        "modelFile": model_file(epoch),
        "optimFile": optim_file(epoch),
        "bestTop1": best[0],
        "bestTop5": best[1],
    }
    atomic_save(latest_record, os.path.join(save_dir, LATEST))


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
    model = load_file(os.path.join(resume_dir, record["modelFile"]))
    optim_state = load_file(os.path.join(resume_dir, record["optimFile"]))
    return {
        "epoch": record["epoch"],
        "model": model,
        "optimState": optim_state,
        "bestTop1": record.get("bestTop1", float("inf")),
        "bestTop5": record.get("bestTop5", float("inf")),
        "modelPath": os.path.join(resume_dir, record["modelFile"]),
    }


def load_model_file(path: str) -> dict:
    """A model file as a record: ours as saved; a bare state_dict gets arch None."""
    content = load_file(path)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        return content
    if isinstance(content, dict) and content and all(torch.is_tensor(v) for v in content.values()):
        return {"model": clean_state_dict(content), "arch": None, "classes": None}
    raise CheckpointError(f"{path} holds neither a model record nor a state_dict")
