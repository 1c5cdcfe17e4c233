"""Print the supported networks with parameters and multiply-adds (README's model table).

Usage: python scripts/model_table.py   (builds every network on the meta device: seconds)
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from datasets import table  # noqa: E402

# (label, create() arguments, published params, published GFLOPs (= GMACs), source)
NETWORKS = [
    ("ResNet-18", ("resnet", 18, "imagenet"), {}, "11.7M", "1.81", "torchvision"),
    ("ResNet-34", ("resnet", 34, "imagenet"), {}, "21.8M", "3.66", "torchvision"),
    ("ResNet-50", ("resnet", 50, "imagenet"), {}, "25.6M", "4.09", "torchvision"),
    ("ResNet-101", ("resnet", 101, "imagenet"), {}, "44.5M", "7.80", "torchvision"),
    ("ResNet-152", ("resnet", 152, "imagenet"), {}, "60.2M", "11.51", "torchvision"),
    ("PreResNet-200", ("preresnet", 200, "imagenet"), {}, None, None, ""),
    (
        "ResNeXt-50 32x4d",
        ("resnext", 50, "imagenet"),
        {"cardinality": 32, "baseWidth": 4},
        "25.0M",
        "4.2",
        "ResNeXt paper",
    ),
    (
        "ResNeXt-101 32x4d",
        ("resnext", 101, "imagenet"),
        {"cardinality": 32, "baseWidth": 4},
        "~44M",
        "~7.8",
        "ResNeXt README",
    ),
    (
        "ResNeXt-101 64x4d",
        ("resnext", 101, "imagenet"),
        {"cardinality": 64, "baseWidth": 4},
        "83.5M",
        "15.46",
        "torchvision",
    ),
    ("SE-ResNet-50", ("resnet", 50, "imagenet"), {"se": 16}, "28.1M", "3.87", "SENet paper"),
    (
        "SE-ResNeXt-50 32x4d",
        ("resnext", 50, "imagenet"),
        {"cardinality": 32, "baseWidth": 4, "se": 16},
        "27.6M",
        "4.25",
        "SENet paper",
    ),
    ("SENet-154", ("senet", 154, "imagenet"), {}, "115.1M", "20.8", "timm"),
    ("ResNeSt-50", ("resnest", 50, "imagenet"), {}, "27.5M", "5.4", "ResNeSt paper, timm"),
    ("ResNeSt-101", ("resnest", 101, "imagenet"), {}, "48.3M", None, "ResNeSt paper"),
    ("ResNeSt-200", ("resnest", 200, "imagenet"), {}, "70.2M", None, "ResNeSt paper"),
    ("ResNeSt-269", ("resnest", 269, "imagenet"), {}, "110.9M", None, "ResNeSt paper"),
    (
        "WRN-50-2 (ResNeXt 1x128d)",
        ("resnext", 50, "imagenet"),
        {"cardinality": 1, "baseWidth": 128},
        "68.9M",
        "11.40",
        "torchvision",
    ),
    ("ResNet-20 CIFAR", ("resnet", 20, "cifar10"), {}, "0.27M", None, "ResNet paper"),
    ("ResNet-110 CIFAR", ("resnet", 110, "cifar10"), {}, "1.7M", None, "ResNet paper"),
    ("ResNet-1202 CIFAR", ("resnet", 1202, "cifar10"), {}, "19.4M", None, "ResNet paper"),
    (
        "ResNeXt-29 8x64d CIFAR-10",
        ("resnext", 29, "cifar10"),
        {"cardinality": 8, "baseWidth": 64},
        "34.4M",
        None,
        "ResNeXt paper",
    ),
    (
        "ResNeXt-29 16x64d CIFAR-10",
        ("resnext", 29, "cifar10"),
        {"cardinality": 16, "baseWidth": 64},
        "68.1M",
        None,
        "ResNeXt paper",
    ),
    ("WRN-40-4 CIFAR-10", ("wrn", 40, "cifar10"), {"widenFactor": 4}, "8.9M", None, "WRN paper"),
    ("WRN-16-8 CIFAR-10", ("wrn", 16, "cifar10"), {"widenFactor": 8}, "11.0M", None, "WRN paper"),
    ("WRN-28-10 CIFAR-10", ("wrn", 28, "cifar10"), {"widenFactor": 10}, "36.5M", None, "WRN paper"),
]


def main() -> None:
    """Print one markdown row per network."""
    print("| network | params | GMACs | published params | published GFLOPs | source |")
    print("|---|---|---|---|---|---|")
    for label, args, kwargs, paper_params, paper_flops, source in NETWORKS:
        with torch.device("meta"):
            model = models.create(*args, **kwargs)
        size = 32 if table.is_small(args[2]) else 224
        params, macs = models.complexity(model, size)
        published = [value or "—" for value in (paper_params, paper_flops, source)]
        row = [label, f"{params:,}", f"{macs / 1e9:.3f} @{size}", *published]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
