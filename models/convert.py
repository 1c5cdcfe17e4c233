"""Weights from elsewhere in this package's names, and back: torchvision's and timm's
state_dicts renamed, and the network a torchvision / timm state_dict is, read from its
shapes. (The Lua's .t7 files: scripts/convert_t7.py.)"""

import re
from collections.abc import Mapping

import torch

from models import resnest, senet

# torchvision's names -> ours, applied to the start or the middle of state_dict keys.
TORCHVISION_RENAMES = (
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.bn."),
    (r"\.downsample\.", ".shortcut."),
)
# timm's deep stem (ResNeSt: conv1.0 ... conv1.6, then bn1) -> ours (stem.0 ... stem.7).
DEEP_STEM_RENAMES = (
    (r"^conv1\.(\d+)\.", r"stem.\1."),
    (r"^bn1\.", "stem.7."),
    (r"\.downsample\.", ".shortcut."),
)


def _rename(state_dict: Mapping[str, torch.Tensor], renames) -> dict[str, torch.Tensor]:
    result = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        result[key] = value
    return result


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet/ResNeXt state_dict to this package's names."""
    return _rename(state_dict, TORCHVISION_RENAMES)


def to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename one of our ResNet/ResNeXt (shortcut B) state_dicts to torchvision's names."""
    reverse = (
        (r"^stem\.conv\.", "conv1."),
        (r"^stem\.bn\.", "bn1."),
        (r"\.shortcut\.", ".downsample."),
    )
    return _rename(state_dict, reverse)


def from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm resnet / resnext / seresnet / seresnext / resnest / senet154
    state_dict to our names (timm names the first four as torchvision does, the SE module
    as se.fc1 / se.fc2 and the split attention as conv2.conv / bn0 / fc1 / bn1 / fc2, as
    ours; the deep stem differs)."""
    if "conv1.0.weight" in state_dict:  # a deep stem: ResNeSt, SENet-154
        return _rename(state_dict, DEEP_STEM_RENAMES)
    return from_torchvision(state_dict)


def to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename one of our ResNet / ResNeXt (shortcut B, SE or not), ResNeSt or SENet-154
    state_dicts to timm's names."""
    if "stem.0.weight" in state_dict:
        reverse = (
            (r"^stem\.7\.", "bn1."),
            (r"^stem\.(\d+)\.", r"conv1.\1."),
            (r"\.shortcut\.", ".downsample."),
        )
        return _rename(state_dict, reverse)
    return to_torchvision(state_dict)


def is_foreign(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state_dict has torchvision's or timm's names (not this package's)."""
    return "conv1.weight" in state_dict or "conv1.0.weight" in state_dict


# Blocks per stage -> depth, for torchvision's ImageNet ResNets (basic and bottleneck).
TORCHVISION_DEPTHS = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
                      (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101,
                      (True, (3, 8, 36, 3)): 152, (True, (3, 24, 36, 3)): 200}  # fmt: skip


def arch_of_resnest(state_dict: Mapping[str, torch.Tensor], blocks: tuple) -> dict:
    """The create() arguments of a timm (or resnest package) ResNeSt state_dict."""
    depths = {counts: depth for depth, counts in resnest.IMAGENET_COUNTS.items()}
    if blocks not in depths:
        raise ValueError(f"not a ResNeSt state_dict (blocks per stage {blocks})")
    width = state_dict["layer1.0.conv1.weight"].shape[0]
    cardinality = width // state_dict["layer1.0.conv2.fc1.weight"].shape[1]
    return {
        "netType": "resnest",
        "depth": depths[blocks],
        "dataset": "imagenet",
        "nClasses": state_dict["fc.weight"].shape[0],
        "cardinality": cardinality,
        "baseWidth": width // cardinality,
        "radix": state_dict["layer1.0.conv2.conv.weight"].shape[0] // width,
    }


def arch_of_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The create() arguments of a torchvision (or timm) ResNet / ResNeXt / ResNeSt
    state_dict, read from its shapes: blocks per stage give the depth, the first grouped
    conv the cardinality and width, the SE modules their ratio."""
    blocks = tuple(
        1
        + max(
            (int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", k))),
            default=-1,
        )
        for s in range(1, 5)
    )
    if "layer1.0.conv2.fc1.weight" in state_dict:
        return arch_of_resnest(state_dict, blocks)
    if "conv1.0.weight" in state_dict:  # a deep stem without split attention
        if blocks != senet.IMAGENET_COUNTS[154]:
            raise ValueError(f"not a SENet-154 state_dict (blocks per stage {blocks})")
        return {
            "netType": "senet",
            "depth": 154,
            "dataset": "imagenet",
            "nClasses": state_dict["fc.weight"].shape[0],
        }
    bottleneck = "layer1.0.conv3.weight" in state_dict
    depth = TORCHVISION_DEPTHS.get((bottleneck, blocks))
    if depth is None:
        raise ValueError(f"not a torchvision ResNet state_dict (blocks per stage {blocks})")
    arch = {
        "netType": "resnet",
        "depth": depth,
        "dataset": "imagenet",
        "shortcutType": "B",
        "nClasses": state_dict["fc.weight"].shape[0],
    }
    if bottleneck:
        width, per_group = state_dict["layer1.0.conv2.weight"].shape[:2]
        cardinality = width // per_group
        if cardinality > 1 or width != 64:
            arch.update(netType="resnext", cardinality=cardinality, baseWidth=width // cardinality)
    squeezes = [v.shape for k, v in state_dict.items() if k.endswith(".se.fc1.weight")]
    if squeezes:  # timm's seresnet / seresnext; the widest is least rounded
        widest = max(squeezes, key=lambda shape: shape[1])
        arch["se"] = round(widest[1] / widest[0])
    return arch
