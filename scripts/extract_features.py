"""Penultimate-layer features of images, as the Lua's extract-features.lua:

    python scripts/extract_features.py CHECKPOINT [BATCH_SIZE] DIR|IMAGE... [-o FILE]
        [-layer pool|stem|layer1|...]
    python scripts/extract_features.py -weights NAME [BATCH_SIZE] DIR|IMAGE... [-o FILE]

A DIR stands for every image in it and its subfolders (a class-per-folder tree). Writes
FILE (default features.pt): {"features": N x D float tensor (the pooled activations fed to
the classifier), "image_list": the N files in order}; with -layer stem or layerK, the N x C x
H x W output of that stage instead (a detector's C2-C5 are layer1-layer4)."""

import argparse
import sys

import inference
import torch
from torch import nn

from errors import UsageError  # noqa: E402 - inference puts the repository root on the path

OUTPUT = "features.pt"


class StageOutput(nn.Module):
    """The output of one stage of a network (its stem, or layerK)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        names = ["stem", *model.stage_names]
        if layer not in names:
            raise UsageError(f"unknown -layer {layer}; valid: pool, {', '.join(names)}")
        self.parts = [getattr(model, name) for name in names[: names.index(layer) + 1]]

    def forward(self, x):
        for part in self.parts:
            x = part(x)
        return x


@torch.no_grad()
def extract(checkpoint: str, files: list[str], batch_size: int, layer: str = "pool") -> dict:
    """Features of every image, in order: the pooled vector the classifier reads, or the
    output of the stage named by layer."""
    files = inference.image_files(files)  # before the model: a typo costs no download
    device = inference.device_for_inference()
    model, view, _ = inference.load_model(checkpoint, device)
    model.fc = nn.Identity()  # the Lua removed the last nn.Linear
    network = model if layer == "pool" else StageOutput(model, layer)
    features = [
        network(inputs.to(device)).float().cpu()
        for _, inputs in inference.batches(files, view, batch_size)
    ]
    return {"features": torch.cat(features), "image_list": files}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a model file (with -weights: the first input)")
    parser.add_argument("inputs", nargs="*", help="[BATCH_SIZE] then image files or directories")
    parser.add_argument("-o", "--output", default=OUTPUT, help="where to save the features")
    parser.add_argument("-layer", default="pool", help="pool (default), stem or layer1..layerN")
    parser.add_argument("-weights", help="published weights by name, e.g. ResNet50_Weights.DEFAULT")
    args = parser.parse_args(argv)
    source, inputs = inference.source_and_inputs(args.checkpoint, args.inputs, args.weights)
    batch_size = 32
    if len(inputs) > 1 and inputs[0].isdigit():
        batch_size, inputs = int(inputs[0]), inputs[1:]
    try:
        if batch_size < 1:
            raise UsageError(f"BATCH_SIZE must be positive, got {batch_size}")
        result = extract(source, inputs, batch_size, args.layer)
    except (UsageError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        torch.save(result, args.output)
    except OSError as exc:
        print(f"error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"saved features of {len(result['image_list'])} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
