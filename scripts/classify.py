"""Top-5 classes of images with a trained model, as the Lua's pretrained/classify.lua:

    python scripts/classify.py CHECKPOINT IMAGE...
    python scripts/classify.py -weights NAME IMAGE...

CHECKPOINT: a model file of this tool (model_best.pth, model_<epoch>.pth), a file or Hub
folder exported by scripts/export.py, or a torchvision ResNet / ResNeXt state_dict; NAME:
published weights, torchvision's (ResNet50_Weights.IMAGENET1K_V2) or timm's
(timm/resnest50d.in1k). For each image: "Classes
for <file>", then five lines "probability<TAB>class name" (the names stored in the checkpoint
or coming with the weights; ImageNet-1k's readable names for 1000-way ImageNet models), then
a blank line."""

import argparse
import sys

import inference
import torch

from errors import UsageError  # noqa: E402 - inference puts the repository root on the path


@torch.no_grad()
def classify(checkpoint: str, files: list[str], batch_size: int = 32, top: int = 5) -> None:
    """Print the top classes of each image."""
    files = inference.image_files(files)  # before the model: a typo costs no download
    device = inference.device_for_inference()
    model, view, names = inference.load_model(checkpoint, device)
    for paths, inputs in inference.batches(files, view, batch_size):
        probabilities = model(inputs.to(device)).float().softmax(1)
        best = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
        for path, values, indices in zip(paths, best.values, best.indices, strict=True):
            print(f"Classes for {path}")
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                print(f"{value:.4f}\t{names[index]}")
            print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a model file (with -weights: the first image)")
    parser.add_argument("images", nargs="*", help="image files or directories of images")
    parser.add_argument("-weights", help="published weights by name, e.g. ResNet50_Weights.DEFAULT")
    args = parser.parse_args(argv)
    source, images = inference.source_and_inputs(args.checkpoint, args.images, args.weights)
    try:
        classify(source, images)
    except (UsageError, OSError) as exc:  # DataError, CheckpointError, unreadable files
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
