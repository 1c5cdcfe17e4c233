"""scripts/classify.py and scripts/extract_features.py (ports of the Lua's pretrained/
helpers), and fine-tuning end to end as the Lua documented it."""

import glob
import gzip
import json
import os
import sys

import pytest
import runs
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(script, *argv, cwd=None, env=None):
    """python script argv, run in this process."""
    return runs.script_run(script, argv, env=env, cwd=cwd)


def main(*argv):
    """python main.py argv, run in this process."""
    return runs.main_run(argv)


def script(name):
    return os.path.join(ROOT, "scripts", name)


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """torchvision's resnet18 as its published files are: a bare state_dict."""
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def fine_tuned(jpeg_root, torchvision_file, tmp_path_factory):
    """-retrain a torchvision ResNet-18 with a new 3-way classifier on the JPEG folders."""
    save = tmp_path_factory.mktemp("finetune")
    done = main("-dataset", "imagenet", "-netType", "resnet",
                  "-depth", "18", "-retrain", str(torchvision_file), "-resetClassifier", "true",
                  "-nClasses", "3", "-data", jpeg_root, "-nEpochs", "1", "-batchSize", "5",
                  "-LR", "0.01", "-nThreads", "0", "-save", str(save), "-gen", str(save))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert " => Replacing classifier with 3-way classifier" in done.stdout
    return save


def test_the_fine_tuned_model_tests_alone(fine_tuned, jpeg_root):
    done = main("-dataset", "imagenet", "-netType", "resnet",
                  "-depth", "18", "-testOnly", "true", "-resume", str(fine_tuned), "-data",
                  jpeg_root, "-nThreads", "0", "-batchSize", "5", "-save", str(fine_tuned),
                  "-gen", str(fine_tuned), "-resetClassifier", "true", "-nClasses", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith(" * Results top1: ")


def test_classify_prints_the_fine_tuned_class_names(fine_tuned, jpeg_root):
    images = [os.path.join(jpeg_root, "val", c, sorted(os.listdir(os.path.join(jpeg_root, "val", c)))[0])
              for c in ("Zebra", "apple")]  # fmt: skip
    done = python(script("classify.py"), str(fine_tuned / "model_best.pth"), *images)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split("\n\n")
    assert blocks[0].splitlines()[0] == f"Classes for {images[0]}"
    for block in blocks[:2]:
        rows = [line.split("\t") for line in block.splitlines()[1:]]
        assert sorted(name for _, name in rows) == ["Zebra", "apple", "banana"]  # k = 3 classes
        probabilities = [float(p) for p, _ in rows]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=2e-4)


def test_classify_names_imagenet_classes_for_a_torchvision_file(torchvision_file, foolbox_data):
    image = os.path.join(foolbox_data, "imagenet_00_243.jpg")
    done = python(script("classify.py"), str(torchvision_file), image)
    assert done.returncode == 0, done.stderr
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    rows = [line.split("\t") for line in done.stdout.splitlines()[1:6]]
    assert len(rows) == 5 and all(name in names for _, name in rows)
    assert len({name for _, name in rows}) == 5


def test_extract_features_writes_the_penultimate_layer_and_the_file_list(
    fine_tuned, jpeg_root, tmp_path
):
    folder = os.path.join(jpeg_root, "train", "apple")
    done = python(script("extract_features.py"), str(fine_tuned / "model_best.pth"), "2", folder,
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"saved features of {len(os.listdir(folder))} images to features.pt\n"
    saved = torch.load(tmp_path / "features.pt", weights_only=True)
    files = sorted(os.listdir(folder))
    assert saved["image_list"] == [os.path.join(folder, name) for name in files]
    assert saved["features"].shape == (len(files), 512)
    assert (saved["features"] >= 0).all()  # pooled after a ReLU


def test_extract_features_reads_a_class_per_folder_tree_into_the_named_file(
    fine_tuned, jpeg_root, tmp_path
):
    tree = os.path.join(jpeg_root, "val")
    os.mkfifo(tmp_path / "pipe.jpg")  # not a file: never opened
    output = tmp_path / "out" / "val.pt"
    output.parent.mkdir()
    done = python(script("extract_features.py"), str(fine_tuned / "model_best.pth"), tree,
                  str(tmp_path), "-o", str(output))  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [os.path.join(tree, c, n) for c in sorted(os.listdir(tree))
                for n in sorted(os.listdir(os.path.join(tree, c)))]  # fmt: skip
    assert done.stdout == f"saved features of {len(expected)} images to {output}\n"
    saved = torch.load(output, weights_only=True)
    assert saved["image_list"] == expected and saved["features"].shape == (len(expected), 512)


def test_extract_features_saves_a_chosen_stage(fine_tuned, jpeg_root, tmp_path):
    folder = os.path.join(jpeg_root, "train", "apple")
    model = str(fine_tuned / "model_best.pth")
    done = python(script("extract_features.py"), model, folder, "-layer", "layer2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / "features.pt", weights_only=True)
    assert saved["features"].shape == (len(os.listdir(folder)), 128, 28, 28)  # C3 at 224
    wrong = python(script("extract_features.py"), model, folder, "-layer", "layer5", cwd=tmp_path)
    assert wrong.returncode == 2
    assert (
        wrong.stderr
        == "error: unknown -layer layer5; valid: pool, stem, layer1, layer2, layer3, layer4\n"
    )


def test_the_scripts_say_what_is_wrong_in_one_line(fine_tuned, tmp_path):
    missing = python(
        script("classify.py"), str(fine_tuned / "model_best.pth"), str(tmp_path / "x.jpg")
    )
    assert missing.returncode == 2
    assert missing.stderr == f"error: no such image or directory: {tmp_path / 'x.jpg'}\n"
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    bad = python(
        script("extract_features.py"), str(fine_tuned / "model_best.pth"), str(tmp_path / "bad.jpg")
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot read image ")
    no_model = python(script("classify.py"), str(tmp_path / "none.pth"), str(tmp_path / "bad.jpg"))
    assert no_model.returncode == 2 and no_model.stderr.startswith("error: ")
    for name in ("classify.py", "extract_features.py"):  # a model and no image
        no_image = python(script(name), str(fine_tuned / "model_best.pth"))
        assert no_image.returncode == 2, no_image.stderr
        assert no_image.stderr == "error: no images given (files or directories of images)\n"
    # Files of networks this tool does not build: a state_dict of no ResNet, an arch of none.
    torch.save({"layer.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    record = torch.load(fine_tuned / "model_best.pth", weights_only=True)
    torch.save({**record, "arch": {**record["arch"], "depth": 21}}, tmp_path / "depth21.pth")
    for name in ("other.pth", "depth21.pth"):
        done = python(script("classify.py"), str(tmp_path / name), str(tmp_path / "bad.jpg"))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_plot_curves_draws_a_png_from_real_runs_records(fine_tuned, tmp_path):
    output = tmp_path / "curves.png"
    done = python(script("plot_curves.py"), str(fine_tuned), str(fine_tuned), "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(output) as image:
        assert image.size[0] > 400 and image.size[1] > 300


def test_plot_curves_reads_one_point_per_epoch_and_split(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_curves

    records = [{"epoch": 1, "iter": 3, "split": "train", "top1": 90.0},
               {"epoch": 1, "iter": None, "split": "train", "top1": 80.0},
               {"epoch": 1, "iter": None, "split": "val", "top1": 70.0},
               {"epoch": 2, "iter": None, "split": "val", "top1": 60.0},
               {"epoch": 2, "iter": None, "split": "val", "top1": 50.0}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = {"train": [(1, 80.0)], "val": [(1, 70.0), (2, 50.0)]}
    assert plot_curves.read_curves(str(tmp_path)) == expected
    kept = tmp_path / "kept"  # docs/results keeps records gzipped
    kept.mkdir()
    with gzip.open(kept / "metrics.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    assert plot_curves.read_curves(str(kept)) == expected
    empty = python(script("plot_curves.py"), str(tmp_path / "nothing"))
    assert empty.returncode == 2 and empty.stderr.startswith("error: no metrics.jsonl in ")


def test_small_images_are_prepared_as_their_data_sets_were():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import inference
    from PIL import Image

    from datasets import cifar, fashionmnist

    image = Image.new("RGB", (40, 30), (10, 200, 30))
    grey = inference.small_image(image, "fashionmnist")  # Fashion-MNIST: one channel, 28 x 28
    level = 0.299 * 10 + 0.587 * 200 + 0.114 * 30  # PIL's L conversion
    expected = (level - fashionmnist.MEAN[0]) / fashionmnist.STD[0]
    assert grey.shape == (3, 28, 28) and torch.allclose(grey, torch.tensor(expected), atol=0.02)
    colour = inference.small_image(image, "cifar10")
    mean, std = cifar.MEANSTD["cifar10"]
    assert colour.shape == (3, 32, 32)
    assert torch.allclose(
        colour[:, 5, 5], (torch.tensor([10.0, 200, 30]) - torch.tensor(mean)) / torch.tensor(std)
    )


def test_no_script_imports_main():
    """main.py is the command line's table of contents, not a library: what the scripts
    share with it lives in the modules that own it."""
    import ast

    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py"))):
        tree = ast.parse(open(path).read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}  # fmt: skip
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "main" not in imported, path


def test_the_curves_have_whole_epochs_and_a_title_naming_the_run(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_curves
    from matplotlib import pyplot

    records = [{"epoch": e, "iter": None, "split": s, "top1": 50.0 - e} for e in (1, 2, 3)
               for s in ("train", "val")]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "opts.json").write_text(json.dumps({"netType": "resnet", "depth": 20,
                                                    "dataset": "fashionmnist"}))  # fmt: skip
    figure = plot_curves.curves_figure([str(tmp_path)])
    axes = figure.axes[0]
    figure.canvas.draw()
    ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    assert axes.get_title() == "resnet-20 on fashionmnist: top-1 error by epoch"
    pyplot.close(figure)
