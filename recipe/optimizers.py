"""The optimizer: the Lua's Nesterov SGD, over the trainable parameters in groups by weight
decay (one group unless normalisation layers or biases get a decay of their own)."""

import torch
from torch import nn

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
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=momentum,
        dampening=0.0,
        weight_decay=weight_decay,
        nesterov=nesterov and momentum > 0,
    )
