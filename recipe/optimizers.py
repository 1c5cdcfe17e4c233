"""The optimizer -optimizer names: the Lua's Nesterov SGD (the default), AdamW, RMSprop (as
torchvision's references set it), and LAMB and LARS from timm (an optional dependency), over
the trainable parameters in groups by weight decay (one group unless normalisation layers or
biases get a decay of their own). Each group records the optimizer's name, so that a resume
with another one is refused."""

import importlib.util

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "rmsprop", "lamb", "lars")
WITH_MOMENTUM = ("sgd", "rmsprop", "lars")  # the ones -momentum applies to
FROM_TIMM = ("lamb", "lars")

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    norm_decay: float | None = None,
    bias_decay: float | None = None,
) -> list[dict]:
    """The trainable parameters (frozen ones are left out) as optimizer groups: every bias
    gets bias_decay and the other parameters of normalisation layers norm_decay, when
    given (torchvision's reference sets them so); the rest weight_decay."""
    decays = {"other": weight_decay, "norm": norm_decay, "bias": bias_decay}
    groups = {"other": [], "norm": [], "bias": []}
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if name == "bias" and bias_decay is not None:
                groups["bias"].append(parameter)
            elif is_norm and norm_decay is not None:
                groups["norm"].append(parameter)
            else:
                groups["other"].append(parameter)
    return [
        {"params": params, "weight_decay": decays[kind]}
        for kind, params in groups.items()
        if params or kind == "other"
    ]


def sgd(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    norm_decay: float | None = None,
    bias_decay: float | None = None,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """Nesterov SGD as the Lua's optim.sgd (nesterov False: plain momentum SGD; momentum 0:
    plain SGD), dampening 0."""
    groups = parameter_groups(model, weight_decay, norm_decay, bias_decay)
    return make("sgd", groups, lr, momentum, nesterov)


def missing_package(name: str) -> str | None:
    """The package optimizer `name` needs that is not installed (LAMB and LARS: timm)."""
    if name in FROM_TIMM and importlib.util.find_spec("timm") is None:
        return "timm"
    return None


def make(name: str, groups: list[dict], lr: float, momentum: float, nesterov: bool):
    """The optimizer `name` over parameter groups (their weight decays set), its own name
    kept in each group. AdamW and LAMB use their usual betas (0.9, 0.999); RMSprop takes
    torchvision's alpha 0.9 and eps 0.0316; LARS, timm's trust coefficient 0.001."""
    for group in groups:
        group["optimizer"] = name
    if name == "sgd":
        nesterov = nesterov and momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=0.0, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=0.0316, momentum=momentum)
    from timm import optim as timm_optim  # optional: only these two need it (see missing_package)

    if name == "lamb":
        return timm_optim.Lamb(groups, lr=lr)
    return timm_optim.Lars(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def saved_name(state: dict) -> str:
    """The optimizer a saved state is of (states saved before -optimizer: sgd)."""
    groups = state.get("param_groups") or [{}]
    return groups[0].get("optimizer", "sgd")
