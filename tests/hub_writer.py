"""Write an ImageNet-style JPEG tree as Hugging Face's `datasets` package itself writes it: the
Hub's parquet layout (data/<split>-0000i-of-0000n.parquet, images embedded) and a save_to_disk
folder. Run as a script, in a process of its own: this project's own `datasets` package would
shadow Hugging Face's in the test process.

    python tests/hub_writer.py JPEG_TREE OUT ROWS_PER_GROUP FILES_PER_SPLIT
"""

import os
import sys

import datasets


def split_rows(tree: str, split: str, classes: list[str]) -> dict:
    """The split's images (bytes and file name) and labels, in the class folders' order."""
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(tree, split, name)
        for file in sorted(os.listdir(folder)):
            with open(os.path.join(folder, file), "rb") as handle:
                images.append({"bytes": handle.read(), "path": file})
            labels.append(label)
    return {"image": images, "label": labels}


def main(tree: str, out: str, rows_per_group: int, files: int) -> None:
    classes = sorted(os.listdir(os.path.join(tree, "train")), key=os.fsencode)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    splits = datasets.DatasetDict({
        hub: datasets.Dataset.from_dict(split_rows(tree, folder, classes), features=features)
        for hub, folder in (("train", "train"), ("validation", "val"))
    })  # fmt: skip
    splits.save_to_disk(os.path.join(out, "saved"))
    os.makedirs(os.path.join(out, "parquet", "data"))
    for hub, split in splits.items():
        for i in range(files):
            name = f"{hub}-{i:05d}-of-{files:05d}.parquet"
            part = split.shard(files, i, contiguous=True)
            part.to_parquet(os.path.join(out, "parquet", "data", name), batch_size=rows_per_group)


if __name__ == "__main__":
    datasets.disable_progress_bars()
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
