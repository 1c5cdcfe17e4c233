"""mmdetection's own ResNet and ResNeXt backbones, as a test oracle.

mmdet's package __init__ files import its whole model zoo, which needs mmcv's compiled
operators (not in mmcv-lite, the pure-Python build). The backbone modules need only mmcv.cnn,
mmengine and mmdet's registry, so the packages above them are entered without running their
__init__ files; the backbone code itself is mmdet's, unchanged.
"""

import importlib
import os
import sys
import types


def packages_without_init(root: str, names: tuple[str, ...]) -> None:
    """Make each dotted name a package whose submodules import without its __init__."""
    for name in names:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = module


def backbones():
    """(mmdet's ResNet class, mmdet's ResNeXt class)."""
    import mmdet

    root = os.path.dirname(mmdet.__file__)
    packages_without_init(root, ("mmdet.models", "mmdet.models.layers",
                                 "mmdet.models.backbones", "mmdet.utils"))  # fmt: skip
    typing_utils = importlib.import_module("mmdet.utils.typing_utils")
    vars(sys.modules["mmdet.utils"]).update(vars(typing_utils))
    res_layer = importlib.import_module("mmdet.models.layers.res_layer")
    sys.modules["mmdet.models.layers"].ResLayer = res_layer.ResLayer
    resnet = importlib.import_module("mmdet.models.backbones.resnet")
    resnext = importlib.import_module("mmdet.models.backbones.resnext")
    return resnet.ResNet, resnext.ResNeXt
