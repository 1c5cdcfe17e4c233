"""scripts/export.py: every network family to ONNX, checked by the script against PyTorch and
here again with onnxruntime on real images; safetensors whose round trip is bitwise; a Hub
folder that loads back through the tool; every bad input one line, nothing left behind."""

import importlib.util
import json
import os
import re
import signal
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import runs
import torch
from conftest import ROOT, labelled_images

import checkpoints
import models

EXPORT = os.path.join(ROOT, "scripts", "export.py")
# torch's dynamo exporter needs onnxscript; without it (as on the lowest torch's smoke run, and
# on machines that have only onnx and onnxruntime) the TorchScript exporter steps in.
EXPORTER = "dynamo" if importlib.util.find_spec("onnxscript") else "torchscript"
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import inference  # noqa: E402 - scripts/ on the path first

# Every family and form, each block kind once: plain ResNet-18 and ResNeXt-29 without SE would
# export only operators their SE forms export too, and ResNeXt-50 only those of SENet-154
# (grouped bottlenecks with SE) and the ImageNet stem; they are built for other tests below.
FAMILIES = {
    "preresnet-imagenet": {"netType": "preresnet", "depth": 18, "dataset": "imagenet"},
    "se-resnet-imagenet": {"netType": "resnet", "depth": 18, "dataset": "imagenet", "se": 16},
    "senet154": {"netType": "senet", "depth": 154, "dataset": "imagenet"},
    "resnest-imagenet": {"netType": "resnest", "depth": 50, "dataset": "imagenet"},
    "resnet-cifar": {"netType": "resnet", "depth": 20, "dataset": "fashionmnist"},
    "preresnet-cifar": {"netType": "preresnet", "depth": 20, "dataset": "fashionmnist"},
    "se-resnext-cifar": {"netType": "resnext", "depth": 29, "dataset": "fashionmnist",
                         "cardinality": 2, "baseWidth": 4, "se": 16},
}  # fmt: skip
RESNET_IMAGENET = {"netType": "resnet", "depth": 18, "dataset": "imagenet"}
RESNEXT_IMAGENET = {"netType": "resnext", "depth": 50, "dataset": "imagenet"}


def model_file(folder, arch: dict, *, ema: bool = False) -> str:
    """A model file of the network with BatchNorm statistics of real-looking scale (a few
    forward passes in training mode), as a run writes it; ImageNet forms evaluated at 64."""
    arch = models.full_arch({"nClasses": 10 if arch["dataset"] != "imagenet" else 5, **arch})
    torch.manual_seed(0)
    network = models.create(**arch).train()
    side = 64 if arch["dataset"] == "imagenet" else 32
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(8, 3, side, side))
    network.eval()
    evaluation = {"resize": 73, "crop": 64, "interpolation": "bicubic"} if side == 64 else None
    average = None
    if ema:
        average = {"model": {k: v + 0.01 * v.float().std() if v.is_floating_point() else v
                             for k, v in network.state_dict().items()}, "updates": 3}  # fmt: skip
    classes = [f"class {i}" for i in range(arch["nClasses"])]
    record = checkpoints.model_record(network, 4, arch, classes, average, evaluation)
    path = os.path.join(folder, "model_4.pth")
    torch.save(record, path)
    return path


def images_for(foolbox_data, dataset: str) -> list[str]:
    """Real images: foolbox's ImageNet JPEGs, or its Fashion-MNIST PNGs for CIFAR forms."""
    prefix = "imagenet" if dataset == "imagenet" else "fashionMNIST"
    return [path for path, _ in labelled_images(foolbox_data, prefix)]


def export(*argv):
    return runs.script_run(EXPORT, [str(word) for word in argv])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_exports_to_onnx_that_onnxruntime_runs_as_pytorch(
    family, foolbox_data, tmp_path
):
    source = model_file(tmp_path, FAMILIES[family])
    images = images_for(foolbox_data, FAMILIES[family]["dataset"])
    done = export(source, tmp_path / "model.onnx", "--images", *images)
    assert done.returncode == 0, done.stderr
    figures = re.search(rf"{EXPORTER} exporter; onnxruntime on 20 images: largest logit difference"
                        r" (\S+) \(bound 1e-04\), the same top-1 on 20/20", done.stdout)  # fmt: skip
    assert figures and float(figures.group(1)) <= 1e-4, done.stdout
    # Again here, independently: 3 images in one batch (the batch dimension is dynamic).
    loaded = inference.loaded_model(source, torch.device("cpu"))
    inputs = torch.stack([inference.preprocess(path, loaded.view) for path in images[:3]])
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (got,) = session.run(None, {"images": inputs.numpy()})
    with torch.no_grad():
        expected = loaded.model(inputs).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    properties = {
        p.key: json.loads(p.value) for p in onnx.load(tmp_path / "model.onnx").metadata_props
    }
    assert properties["classes"] == loaded.names and properties["opset"] == 18
    assert properties["preprocessing"] == inference.preprocessing(loaded.view)


def test_fp16_onnx_validates_within_its_bound(foolbox_data, tmp_path):
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "half.onnx", "--fp16", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(rf"fp16, {EXPORTER} exporter; onnxruntime on 20 images", done.stdout)
    (graph_input,) = onnx.load(tmp_path / "half.onnx").graph.input
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_the_torchscript_exporter_steps_in_where_dynamo_fails(foolbox_data, tmp_path, monkeypatch):
    export_onnx = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo is not available here")
        return export_onnx(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "model.onnx", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "=> the dynamo exporter failed (dynamo is not available here): used the TorchScript" \
        " exporter" in done.stdout  # fmt: skip
    assert "torchscript exporter; onnxruntime on 20 images" in done.stdout


def test_an_operator_no_exporter_knows_is_named(foolbox_data, tmp_path, monkeypatch):
    @torch.library.custom_op("exporttest::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @mystery.register_fake
    def _(x):
        return torch.empty_like(x)

    forward = models.resnet.ResNet.forward
    monkeypatch.setattr(models.resnet.ResNet, "forward", lambda self, x: forward(self, mystery(x)))
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "model.onnx", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot export this network to ONNX: ")
    assert "exporttest::mystery" in done.stderr  # the TorchScript exporter's words
    if EXPORTER == "dynamo":  # (without onnxscript, dynamo says only that it is missing)
        assert "exporttest.mystery" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["model_4.pth"]


def test_an_onnx_model_that_computes_otherwise_is_refused(foolbox_data, tmp_path, monkeypatch):
    run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run",
                        lambda self, *a, **k: [out + 0.01 for out in run(self, *a, **k)])  # fmt: skip
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "model.onnx", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 1
    assert re.fullmatch(r"error: the ONNX model differs from PyTorch: 20 images: largest logit"
                        r" difference 1\.00e-02 \(bound 1e-04\), the same top-1 on 20/20\n",
                        done.stderr)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["model_4.pth"]


def test_safetensors_round_trip_gives_bitwise_the_same_logits(foolbox_data, tmp_path):
    source = model_file(tmp_path, RESNEXT_IMAGENET, ema=True)
    done = export(source, tmp_path / "model.safetensors", "--format", "safetensors")
    assert done.returncode == 0, done.stderr
    images = images_for(foolbox_data, "imagenet")
    logits = []
    for path in (source, tmp_path / "model.safetensors"):
        loaded = inference.loaded_model(str(path), torch.device("cpu"))
        inputs = torch.stack([inference.preprocess(image, loaded.view) for image in images])
        with torch.no_grad():
            logits.append(loaded.model(inputs))
    assert torch.equal(*logits)  # the -ema weights, as the model file is evaluated with
    metadata = checkpoints.safetensors_metadata(str(tmp_path / "model.safetensors"))
    assert metadata["weights"] == "ema" and metadata["epoch"] == 4
    assert metadata["preprocessing"] == {
        "dataset": "imagenet", "resize": 73, "crop": 64, "interpolation": "bicubic",
        "pixel_range": 1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "grey": False}  # fmt: skip
    assert oct(os.stat(tmp_path / "model.safetensors").st_mode & 0o777) == "0o644"


@pytest.fixture(scope="module")
def fashion_run(fashion_root, tmp_path_factory) -> str:
    """A ResNet-20 trained 2 epochs on the real Fashion-MNIST images: its -save folder."""
    save = tmp_path_factory.mktemp("fashion-run") / "run"
    done = runs.main_run(["-dataset", "fashionmnist", "-data", fashion_root, "-depth", "20",
                          "-batchSize", "8", "-nEpochs", "2", "-save", save, "-tensorboard",
                          "false", "-gen", save.parent / "gen", "-LR", "0.05"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    return str(save)


def test_a_hub_folder_has_card_config_and_weights_and_loads_back(
    fashion_run, foolbox_data, tmp_path
):
    best = os.path.join(fashion_run, "model_best.pth")
    done = export(best, tmp_path / "hub", "--format", "hub")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "hub")) == ["README.md", "config.json", "model.safetensors"]
    with open(tmp_path / "hub" / "config.json") as handle:
        config = json.load(handle)
    assert config["arch"]["depth"] == 20 and config["num_classes"] == 10
    with open(os.path.join(fashion_run, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    result = next(r for r in records if r["split"] == "val" and r["iter"] is None
                  and r["epoch"] == config["epoch"])  # fmt: skip
    card = (tmp_path / "hub" / "README.md").read_text()
    assert f"| validation top-1 / top-5 error | {result['top1']:.2f}% / " in card
    command = next(line for line in card.splitlines() if line.startswith("python main.py -data"))
    assert "-dataset fashionmnist" in command and "-nEpochs 2 -batchSize 8" in command
    assert "-LR 0.05" in command and "-lrSteps" not in command
    images = images_for(foolbox_data, "fashionmnist")
    logits = []
    for path in (best, tmp_path / "hub"):
        loaded = inference.loaded_model(str(path), torch.device("cpu"))
        with torch.no_grad():
            logits.append(
                loaded.model(torch.stack([inference.preprocess(i, loaded.view) for i in images]))
            )
    assert torch.equal(*logits)


def test_exports_start_training_and_classify(fashion_run, fashion_root, foolbox_data, tmp_path):
    best = os.path.join(fashion_run, "model_best.pth")
    assert export(best, tmp_path / "hub", "--format", "hub").returncode == 0
    assert export(best, tmp_path / "m.safetensors", "--format", "safetensors").returncode == 0
    common = ["-dataset", "fashionmnist", "-data", fashion_root, "-nEpochs", "1", "-batchSize",
              "8", "-tensorboard", "false", "-gen", tmp_path / "gen"]  # fmt: skip
    weights = runs.main_run([*common, "-weights", tmp_path / "hub", "-save", tmp_path / "a"])
    assert weights.returncode == 0, weights.stderr
    assert re.search(rf"=> Weights {tmp_path / 'hub'} \(file\): .*-depth 20.*, 10 classes\n",
                     weights.stdout)  # fmt: skip
    retrain = runs.main_run([*common, "-depth", "20", "-retrain", tmp_path / "m.safetensors",
                             "-save", tmp_path / "b"])  # fmt: skip
    assert retrain.returncode == 0, retrain.stderr
    image = images_for(foolbox_data, "fashionmnist")[0]
    classified = runs.script_run(os.path.join(ROOT, "scripts", "classify.py"),
                                 [str(tmp_path / "hub"), image])  # fmt: skip
    assert classified.returncode == 0 and classified.stdout.startswith(f"Classes for {image}\n")


def test_bad_exports_are_one_line_and_leave_nothing(foolbox_data, tmp_path, monkeypatch):
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    (tmp_path / "taken.onnx").write_text("keep")
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    torch.save({"layers": [1, 2]}, tmp_path / "other.pth")
    images = images_for(foolbox_data, "fashionmnist")
    cases = [
        ([source, tmp_path / "taken.onnx", "--images", *images], "taken.onnx exists: give a new name"),
        ([source, tmp_path / "new.onnx"], "--format onnx checks the model on real images: give --images DIR"),
        ([tmp_path / "notes.pth", tmp_path / "new.onnx", "--images", *images], "notes.pth is not a plain checkpoint"),
        ([tmp_path / "other.pth", tmp_path / "new.safetensors", "--format", "safetensors"], "other.pth holds neither a model record nor a state_dict"),
        ([source, tmp_path / "none" / "m.safetensors", "--format", "safetensors"], "no folder"),
    ]  # fmt: skip
    for argv, says in cases:
        done = export(*argv)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    done = export(source, tmp_path / "new.onnx", "--images", *images)
    assert (
        done.stderr
        == "error: --format onnx needs onnx and onnxruntime: pip install onnx onnxruntime\n"
    )
    monkeypatch.setitem(sys.modules, "safetensors", None)
    done = export(source, tmp_path / "new.safetensors", "--format", "safetensors")
    assert done.stderr == "error: --format safetensors needs safetensors: pip install safetensors\n"
    assert sorted(os.listdir(tmp_path)) == ["model_4.pth", "notes.pth", "other.pth", "taken.onnx"]
    assert (tmp_path / "taken.onnx").read_text() == "keep"


def test_weights_and_retrain_refuse_what_they_cannot_use(fashion_root, tmp_path):
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 64)}, tmp_path / "bare.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    common = ["-dataset", "fashionmnist", "-data", fashion_root, "-save", tmp_path / "run",
              "-gen", tmp_path / "gen"]  # fmt: skip
    bare = runs.main_run([*common, "-weights", tmp_path / "bare.safetensors"])
    assert bare.returncode == 2 and bare.stderr == (
        f"error: -weights {tmp_path / 'bare.safetensors'} does not say which network it is (a"
        " bare state_dict): give it to -retrain with the network's flags\n"
    )
    cut = runs.main_run([*common, "-retrain", tmp_path / "cut.safetensors"])
    assert cut.returncode == 2
    assert cut.stderr.startswith(
        f"error: {tmp_path / 'cut.safetensors'} is truncated or not a safetensors file"
    )
    assert not (tmp_path / "run").exists()


def file_opset(path) -> int:
    (version,) = [e.version for e in onnx.load(path).opset_import if e.domain in ("", "ai.onnx")]
    return version


@pytest.mark.parametrize("opset", [13, 20])
def test_the_opset_asked_for_is_the_opset_written(opset, foolbox_data, tmp_path):
    """The dynamo exporter writes opset 18 when asked for less: the TorchScript one does it."""
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "model.onnx", "--opset", opset, "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    exporter = "torchscript" if opset < 18 else EXPORTER
    assert f"ONNX opset {opset}, fp32, {exporter} exporter; onnxruntime on 20 images" in done.stdout
    assert file_opset(tmp_path / "model.onnx") == opset
    properties = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(properties["opset"]) == opset


def test_an_opset_the_exporters_cannot_give_is_refused(foolbox_data, tmp_path, monkeypatch):
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    images = images_for(foolbox_data, "fashionmnist")
    newest = onnx.defs.onnx_opset_version()
    for opset in (6, newest + 1):
        done = export(source, tmp_path / "model.onnx", "--opset", opset, "--images", *images)
        assert done.returncode == 2 and done.stderr == (
            f"error: --opset {opset}: the installed onnx {onnx.__version__} writes opsets 7 to"
            f" {newest}; give one of those (default 18)\n"
        )
    export_onnx = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export",  # an exporter that writes an opset of its own
                        lambda *a, opset_version=None, **k: export_onnx(*a, opset_version=21, **k))  # fmt: skip
    done = export(source, tmp_path / "model.onnx", "--opset", 20, "--images", *images)
    assert done.returncode == 2 and done.stderr == (
        "error: --opset 20: the exporter wrote opset 21 instead; give --opset 21, nothing was"
        " written\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["model_4.pth"]


def test_a_stopped_export_leaves_nothing(foolbox_data, tmp_path, monkeypatch):
    run = onnxruntime.InferenceSession.run

    def interrupted(self, *args, **kwargs):  # Ctrl-C while the exported file is checked
        os.kill(os.getpid(), signal.SIGINT)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", interrupted)
    source = model_file(tmp_path, FAMILIES["resnet-cifar"])
    done = export(source, tmp_path / "model.onnx", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 130 and done.stderr.splitlines() == [
        f"=> Stopped by SIGINT while exporting; nothing was written ({tmp_path}/model.onnx)"
    ]
    assert sorted(os.listdir(tmp_path)) == ["model_4.pth"]


BAD_RECORDS = {
    "an unknown network argument": (lambda r: r["arch"].update(bogus=3),
                                    "records a network argument 'bogus' that this tool's networks"
                                    " do not take (they take netType, depth, "),
    "a depth as text": (lambda r: r["arch"].update(depth="18"),
                        "records depth '18', which is not a whole number"),
    "an arch that is a list": (lambda r: r.update(arch=["resnet", 18]),
                               "records its network as ['resnet', 18], not as a table"),
    "an unknown evaluation key": (lambda r: r.update(evaluation={"crop": 64, "shape": 3}),
                                  "records an evaluation setting 'shape': 3"),
    "a crop as text": (lambda r: r.update(evaluation={"crop": "64"}),
                       "records an evaluation setting 'crop': '64'"),
    "a crop beyond its resize": (lambda r: r.update(evaluation={"crop": 300, "resize": 256}),
                                 "records an evaluation crop of 300 after a 'bicubic' resize to"
                                 " 256: a crop is at least 32 and at most the resize"),
    "classes that are a number": (lambda r: r.update(classes=5),
                                  "records its classes as 5, not a list of names"),
    "a weight that is text": (lambda r: r["model"].update({"fc.weight": "x"}),
                              "holds 'fc.weight': 'x' among its weights, where a tensor"),
    "a network name of a megabyte": (lambda r: r["arch"].update(netType="x" * 2**20),
                                     "unknown netType 'xxxxxxxx"),
    "a crop of 100000": (lambda r: r.update(evaluation={"crop": 100000, "resize": 100000}),
                         "prepares images at 100000 pixels a side (its evaluation resize 100000,"
                         " crop 100000): one needs over"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_a_model_file_with_a_bad_record_is_one_line_everywhere(kind, foolbox_data, tmp_path):
    """What a model file records may come from someone else: classify.py, export.py and
    -weights say what is wrong in one line, before any image is prepared."""
    change, says = BAD_RECORDS[kind]
    record = torch.load(model_file(tmp_path, RESNET_IMAGENET), weights_only=True)
    change(record)
    path = tmp_path / "given.pth"
    torch.save(record, path)
    images = images_for(foolbox_data, "imagenet")[:2]
    classified = runs.script_run(os.path.join(ROOT, "scripts", "classify.py"), [path, *images])
    exported = export(path, tmp_path / "m.onnx", "--images", *images)
    weights = runs.main_run(["-weights", path, "-dataset", "imagenet", "-data", foolbox_data,
                             "-save", tmp_path / "run", "-nEpochs", "1"])  # fmt: skip
    for done in (classified, exported, weights):
        if kind == "a crop of 100000" and done is weights:  # main.py's own words for it
            says = "-valCrop 100000 needs over "
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr[:500]
        assert len(done.stderr) < 1000  # data quoted is cut
    assert sorted(os.listdir(tmp_path)) == ["given.pth", "model_4.pth"]


def test_the_docs_onnxruntime_snippet_runs_as_written_on_the_demos_network(
    fashion_run, foolbox_data, tmp_path
):
    """docs/export.md's Python lines, run on an ONNX export of a Fashion-MNIST ResNet-20
    (28 x 28 grey, as the demo's): the input side comes from the file's metadata."""
    text = open(os.path.join(runs.ROOT, "docs", "export.md"), encoding="utf-8").read()
    snippet = re.search(r"Running it.*?```python\n(.*?)```", text, re.S).group(1)
    best = os.path.join(fashion_run, "model_best.pth")
    done = export(best, tmp_path / "model.onnx", "--images",
                  *images_for(foolbox_data, "fashionmnist"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    ran = runs.process_run([sys.executable, "-c", snippet], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    predicted = re.fullmatch(r"\[([0-9 \n]+)\]\n", ran.stdout)
    assert predicted and len(predicted.group(1).split()) == 8  # a class for each of 8 images
