"""Weights into a network: strict loading, with torchvision's and timm's names accepted,
or a one-line error that says how the weights differ and which flags fit them."""

from torch import nn

import checkpoints
from models import arch_flags
from models.convert import arch_of_torchvision, from_timm, is_foreign


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict(strict=True), with torchvision names accepted, or a one-line error
    that says how the weights differ and, for a torchvision-style file, which flags fit."""
    state_dict = checkpoints.clean_state_dict(state_dict)
    torchvision_names = is_foreign(state_dict)  # torchvision's or timm's
    converted = from_timm(state_dict) if torchvision_names else state_dict
    difference = weights_difference(model.state_dict(), converted)
    if difference is None:
        model.load_state_dict(converted, strict=True)
        return
    hint = "pass the options it was trained with"
    if torchvision_names:
        try:
            hint = f"it fits {arch_flags(arch_of_torchvision(state_dict))}"
        except ValueError:
            hint = "it is not a ResNet / ResNeXt / ResNeSt of this tool, torchvision or timm"
    raise checkpoints.CheckpointError(
        f"the weights in {source} do not fit this network ({difference}); {hint}"
    )


def weights_difference(expected: dict, given: dict) -> str | None:
    """How a state_dict differs from the model's, in a few words (None: it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    parts = []
    for words, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {words}, e.g. {keys[0]}")
    if reshaped:
        key = reshaped[0]
        shapes = f"{tuple(given[key].shape)} for {tuple(expected[key].shape)}"
        parts.append(f"{len(reshaped)} of another shape, e.g. {key} {shapes}")
    return "; ".join(parts) or None
