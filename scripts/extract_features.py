"""Penultimate-layer features of images, as the Lua's extract-features.lua:

    python scripts/extract_features.py CHECKPOINT [BATCH_SIZE] DIR|IMAGE... [-o FILE]

A DIR stands for every image in it and its subfolders (a class-per-folder tree). Writes
FILE (default features.pt): {"features": N x D float tensor (the pooled activations fed to
the classifier), "image_list": the N files in order}."""

import argparse
import sys

import inference
import torch
from torch import nn

OUTPUT = "features.pt"


@torch.no_grad()
def extract(checkpoint: str, files: list[str], batch_size: int) -> dict:
    """Features of every image, in order, from the network without its classifier."""
    device = inference.device_for_inference()
    model, arch, _ = inference.load_model(checkpoint, device)
    model.fc = nn.Identity()  # the Lua removed the last nn.Linear
    files = inference.image_files(files)
    features = [model(inputs.to(device)).float().cpu()
                for _, inputs in inference.batches(files, arch, batch_size)]  # fmt: skip
    return {"features": torch.cat(features), "image_list": files}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("inputs", nargs="+", help="[BATCH_SIZE] then image files or directories")
    parser.add_argument("-o", "--output", default=OUTPUT, help="where to save the features")
    args = parser.parse_args(argv)
    inputs, batch_size = args.inputs, 32
    if inputs[0].isdigit() and len(inputs) > 1:
        batch_size, inputs = int(inputs[0]), inputs[1:]
    try:
        if batch_size < 1:
            raise ValueError(f"BATCH_SIZE must be positive, got {batch_size}")
        result = extract(args.checkpoint, inputs, batch_size)
    except (ValueError, OSError) as exc:
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
