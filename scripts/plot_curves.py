"""Train and val top-1 error against epoch for one or more runs, like the training-curve
figure of the ResNeXt README:

    python scripts/plot_curves.py SAVE_DIR... -o curves.png

Each SAVE_DIR is a run's -save folder; its metrics.jsonl (or metrics.jsonl.gz, as
docs/results keeps them) gives one point per epoch and
split (the last record wins, so a resumed run's repeated epochs count once). Needs
matplotlib (pip install matplotlib), this script's only extra dependency."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from errors import UsageError  # noqa: E402 - after the repository root is on the path
from scripts.paper_tables import records_of  # noqa: E402


def read_curves(folder: str) -> dict[str, list[tuple[int, float]]]:
    """{"train": [(epoch, top1)...], "val": [...]} from folder/metrics.jsonl(.gz)."""
    points: dict[str, dict[int, float]] = {"train": {}, "val": {}}
    for record in records_of(folder):
        if record.get("iter") is None and record.get("split") in points:
            points[record["split"]][record["epoch"]] = record["top1"]
    return {split: sorted(values.items()) for split, values in points.items()}


def run_title(folders: list[str]) -> str:
    """What was trained, from the runs' opts.json: network and data set, each once."""
    names = []
    for folder in folders:
        try:
            with open(os.path.join(folder, "opts.json"), encoding="utf-8") as handle:
                opts = json.load(handle)
            name = f"{opts['netType']}-{opts['depth']} on {opts['dataset']}"
        except (OSError, ValueError, KeyError, TypeError):
            name = os.path.basename(os.path.normpath(folder))
        if name not in names:
            names.append(name)
    return ", ".join(names) + ": top-1 error by epoch"


def plot(folders: list[str], output: str) -> None:
    """Draw every run's curves into one PNG: val solid, train dashed, one colour per run."""
    from matplotlib import pyplot

    figure = curves_figure(folders)
    figure.savefig(output, dpi=120, bbox_inches="tight")
    pyplot.close(figure)


def curves_figure(folders: list[str]):
    """The figure plot() saves: whole epochs on the x axis, the runs named in the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, axes = pyplot.subplots(figsize=(8, 5))
    for index, folder in enumerate(folders):
        colour = f"C{index}"
        name = os.path.basename(os.path.normpath(folder))
        for split, style in (("val", "-"), ("train", "--")):
            points = read_curves(folder)[split]
            if points:
                epochs, errors = zip(*points, strict=True)
                axes.plot(epochs, errors, style, color=colour, label=f"{name} {split}")
    axes.set_xlabel("epoch")
    axes.set_ylabel("top-1 error (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # points exist at whole epochs
    axes.set_title(run_title(folders))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="SAVE_DIR")
    parser.add_argument("-o", "--output", default="curves.png")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401 - checked before any work
    except ImportError:
        print("error: plot_curves.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    try:
        plot(args.folders, args.output)
    except (UsageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
