"""Published weights by name (-weights): torchvision's and timm's names, their caches, offline.

No download works here, so the caches are filled as the libraries fill them: torchvision's file
under TORCH_HOME/hub/checkpoints (torch.hub checks the hash only when it downloads), timm's as
a Hugging Face hub snapshot under HF_HOME with HF_HUB_OFFLINE=1. The weights in them are those
of the libraries' own networks built with pretrained=False.
"""

import glob
import json
import math
import os
import shutil
import sys

import pytest
import runs
import timm
import torch
import torchvision
from test_cli import run_main
from test_scripts import python

import models
from datasets import folder_samples
from errors import UsageError
from models import convert, pretrained
from run import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
CLASSIFY = os.path.join(ROOT, "scripts", "classify.py")


def parameter_count(arch: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in models.create(**arch).parameters())


def test_every_torchvision_name_builds_its_network_to_the_published_parameter_count():
    for builder in pretrained.TORCHVISION_BUILDERS:
        for weights in torchvision.models.get_model_weights(builder):
            named = pretrained.resolve(str(weights))
            assert parameter_count(named.arch) == weights.meta["num_params"], weights
            given = weights.transforms()
            assert named.preprocessing[:2] == (given.resize_size[0], given.crop_size[0])


def test_default_is_the_newest_and_the_sizes_are_the_weights_own():
    named = pretrained.resolve("ResNet50_Weights.DEFAULT")
    assert named.name == "ResNet50_Weights.IMAGENET1K_V2"
    assert named.arch["netType"] == "resnet" and named.arch["depth"] == 50
    assert named.preprocessing == (232, 224, "bilinear", *folder_samples.MEANSTD)
    wide = pretrained.resolve("Wide_ResNet50_2_Weights.IMAGENET1K_V1").arch
    assert (wide["netType"], wide["cardinality"], wide["baseWidth"]) == ("resnext", 1, 128)


@pytest.mark.parametrize(
    "name, arch, sizes",
    [
        ("timm/resnest50d.in1k", {"netType": "resnest", "depth": 50, "radix": 2}, (256, 224, "bilinear")),
        ("timm/seresnext50_32x4d.racm_in1k",
         {"netType": "resnext", "depth": 50, "cardinality": 32, "baseWidth": 4, "se": 16},
         (303, 288, "bicubic")),
        ("timm/resnet50.a1_in1k", {"netType": "resnet", "depth": 50}, (288, 288, "bicubic")),
    ],
)  # fmt: skip
def test_timm_names_resolve_to_this_tools_networks_with_timms_test_sizes(name, arch, sizes):
    named = pretrained.resolve(name)
    assert arch.items() <= named.arch.items()
    assert named.preprocessing[:3] == sizes  # timm's test size and crop fraction
    with torch.device("meta"):
        reference = timm.create_model(name.removeprefix("timm/"))
    assert parameter_count(named.arch) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize(
    "name, words",
    [
        ("ResNet50_Weights.IMAGENET1K_V9", "ResNet50_Weights has IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
        ("VGG16_Weights.IMAGENET1K_V1", "not weights of a network this tool builds; torchvision's are ResNet18_Weights"),
        ("timm/resnet50d.a1_in1k", "not a network this tool builds"),
        ("timm/vit_base_patch16_224.augreg_in21k", "not a network this tool builds"),
        ("timm/nosuchnet.x", "timm has no weights of that name"),
        ("timm/resnet50", "its default tag is -weights timm/resnet50.a1_in1k"),
    ],
)  # fmt: skip
def test_a_name_without_weights_of_ours_is_one_line_naming_the_valid_ones(name, words):
    with pytest.raises(UsageError, match=words.replace(".", r"\.")):
        pretrained.resolve(name)


def test_without_timm_a_timm_name_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UsageError, match="pip install timm"):
        pretrained.resolve("timm/resnet50.a1_in1k")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME (not created: nothing may be written there when offline)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def cache_torchvision(home, name: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's network of the weights name, randomly initialised, saved in its
    torch.hub cache file as a download would have put it; the network is returned."""
    weights = torchvision.models.get_weight(name)
    builder = next(b for b in pretrained.TORCHVISION_BUILDERS
                   if torchvision.models.get_model_weights(b) is type(weights))  # fmt: skip
    torch.manual_seed(seed)
    network = torchvision.models.get_model(builder).eval()
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / os.path.basename(weights.url))
    return network


def test_cached_torchvision_weights_load_offline_and_give_torchvisions_logits(torch_home):
    reference = cache_torchvision(torch_home, "ResNet18_Weights.IMAGENET1K_V1")
    record = pretrained.fetch(pretrained.resolve("ResNet18_Weights.IMAGENET1K_V1"), False)
    model = models.create(**record.arch).eval()
    model.load_state_dict(record.weights, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() < 1e-5
    assert record.classes[:2] == ["tench", "goldfish"] and len(record.classes) == 1000
    assert record.evaluation == {"resize": 256, "crop": 224, "interpolation": "bilinear"}


def test_uncached_torchvision_weights_offline_name_the_file_and_folder_and_write_nothing(
    torch_home,
):
    named = pretrained.resolve("ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(pretrained.WeightsUnavailable) as raised:
        pretrained.fetch(named, False)
    message = str(raised.value)
    assert "cannot download resnet18-f37072fd.pth for ResNet18_Weights.IMAGENET1K_V1" in message
    assert named.url in message and f"put it in {torch_home}/hub/checkpoints/" in message
    assert "\n" not in message and not torch_home.exists()


def test_fine_tuning_from_a_name_keeps_the_weights_and_resumes_without_the_cache(
    jpeg_root, torch_home, tmp_path
):
    reference = cache_torchvision(torch_home, "ResNet18_Weights.IMAGENET1K_V1")
    save = tmp_path / "save"
    flags = ["-dataset", "imagenet", "-data", jpeg_root, "-weights", "ResNet18_Weights.IMAGENET1K_V1",
             "-resetClassifier", "true", "-frozenStages", "4", "-cropSize", "64",
             "-batchSize", "5", "-save", str(save), "-gen", str(tmp_path / "gen")]  # fmt: skip
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    done = run_main(*flags, "-nEpochs", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert (
        "=> Weights ResNet18_Weights.IMAGENET1K_V1 (torchvision): -netType resnet -depth 18,"
        " 1000 classes (ImageNet-1k's); evaluated at resize 256 (bilinear), crop 224:"
        " -valResize, -valCrop and -valInterpolation default to those unless -cropSize is given;"
        " published ImageNet-1k error top1 30.242  top5 10.922\n"
    ) in done.stdout
    assert " => Replacing classifier with 3-way classifier" in done.stdout
    record = torch.load(save / "model_1.pth", weights_only=True)
    assert record["arch"]["depth"] == 18 and record["arch"]["nClasses"] == 3
    ours = convert.from_timm(reference.state_dict())
    for key, value in record["model"].items():  # every frozen stage is the weights' bitwise
        if not key.startswith("fc."):
            assert torch.equal(value, ours[key]), key
    shutil.rmtree(torch_home)  # a resumed run reads its checkpoint, not the weights
    resumed = run_main(*flags, "-nEpochs", "2", "-resume", str(save), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "=> Weights" not in resumed.stdout and (save / "model_2.pth").exists()
    assert json.load(open(save / "opts.json"))["weights"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_weights_offline_and_uncached_stop_the_run_before_any_file(jpeg_root, torch_home, tmp_path):
    save = tmp_path / "save"
    done = run_main("-dataset", "imagenet", "-data", jpeg_root, "-weights", "ResNet18_Weights.DEFAULT",
                    "-save", str(save), "-gen", str(tmp_path / "gen"),
                    env={**os.environ, "TORCH_HOME": str(torch_home)})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot download resnet18-f37072fd.pth")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not save.exists() and not torch_home.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ("-weights ResNet18_Weights.IMAGENET1K_V1 -depth 50",
         "-weights ResNet18_Weights.IMAGENET1K_V1 are a network of -netType resnet -depth 18: drop -depth 50"),
        ("-weights ResNet18_Weights.IMAGENET1K_V1 -netType resnext",
         "-weights ResNet18_Weights.IMAGENET1K_V1 are a network of -netType resnet -depth 18:"
         " drop -netType resnext"),
        ("-weights ResNet18_Weights.IMAGENET1K_V1 -retrain model.pth", "give -weights or -retrain, not both"),
        ("-weights model.pth", "model.pth is truncated or not a checkpoint (EOFError)"),
        ("-weights missing.pth", "-weights takes a name such as ResNet50_Weights.IMAGENET1K_V2 or"
                                 " timm/resnest50d.in1k, or an exported file or folder, not"
                                 " missing.pth (no such file)"),
        ("-weights ResNet18_Weights.IMAGENET1K_V9",
         "-weights ResNet18_Weights.IMAGENET1K_V9: ResNet18_Weights has IMAGENET1K_V1, DEFAULT"),
    ],
)  # fmt: skip
def test_a_bad_weights_flag_is_one_error_line_and_exit_2(flags, message, jpeg_root, tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    done = run_main(
        "-dataset",
        "imagenet",
        "-data",
        jpeg_root,
        "-save",
        str(tmp_path / "save"),
        *flags.split(),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {message}") and done.stderr.count("\n") == 1
    assert not (tmp_path / "save").exists()


def test_the_weights_network_and_sizes_become_the_options_unless_given(jpeg_root):
    opts = plan.parse(["-dataset", "imagenet", "-data", jpeg_root,
                          "-weights", "ResNet50_Weights.IMAGENET1K_V2"])  # fmt: skip
    original, parsed = opts, dict(vars(opts))
    opts, named = plan.adopt_weights(opts)
    assert vars(original) == parsed and vars(opts) != parsed  # the parsed options stay
    assert named.name == "ResNet50_Weights.IMAGENET1K_V2"
    assert (opts.netType, opts.depth, opts.shortcutType) == ("resnet", 50, "B")
    assert (opts.valResize, opts.valCrop, opts.valInterpolation) == (232, 224, "bilinear")
    given = plan.parse(["-dataset", "imagenet", "-data", jpeg_root, "-valResize", "256",
                           "-weights", "ResNet50_Weights.IMAGENET1K_V2"])  # fmt: skip
    given, _ = plan.adopt_weights(given)
    assert (given.valResize, given.valCrop) == (256, 224)
    summary = pretrained.summary(pretrained.resolve("ResNet50_Weights.IMAGENET1K_V2"))
    assert summary.endswith("1000 classes (ImageNet-1k's); evaluated at resize 232 (bilinear), crop 224:"
                            " -valResize, -valCrop and -valInterpolation default to those unless -cropSize is"
                            " given; published ImageNet-1k error top1 19.142  top5 4.566")  # fmt: skip


def hub_snapshot(hf_home, name: str, state_dict: dict) -> None:
    """timm's weights file in the Hugging Face cache as `hf download name` leaves it."""
    from safetensors.torch import save_file

    repo = hf_home / "hub" / f"models--{name.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, snapshot / "model.safetensors")


def test_timm_weights_from_the_hub_cache_classify_as_timms_own_model(jpeg_root, tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("resnet18.a1_in1k").eval()
    hf_home = tmp_path / "hf"
    hub_snapshot(hf_home, "timm/resnet18.a1_in1k", reference.state_dict())
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    apples = os.path.join(jpeg_root, "val", "apple")
    image = os.path.join(apples, sorted(os.listdir(apples))[0])
    # Processes of their own: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, on import.
    done = runs.process_run([sys.executable, CLASSIFY, "-weights", "timm/resnet18.a1_in1k", image],
                            env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import inference

    inputs = inference.preprocess(image, inference.View("imagenet", 288, 288))  # timm's test size
    with torch.no_grad():
        probabilities = reference(inputs[None]).softmax(1)[0]
    names = timm.data.ImageNetInfo().label_descriptions()
    best = probabilities.topk(5)
    expected = [
        f"{p:.4f}\t{names[i].split(',')[0]}" for p, i in zip(best.values, best.indices, strict=True)
    ]
    assert done.stdout.splitlines()[1:6] == expected


def test_timm_weights_offline_and_uncached_say_how_to_fetch_them(jpeg_root, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = runs.main_process(["-dataset", "imagenet", "-data", jpeg_root, "-weights",
                              "timm/resnet18.a1_in1k", "-save", tmp_path / "save"], env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: cannot fetch timm/resnet18.a1_in1k: not in the Hugging Face cache"
    )
    assert "hf download timm/resnet18.a1_in1k" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "save").exists()


def test_test_only_evaluates_at_the_weights_sizes(jpeg_root, torch_home, tmp_path):
    cache_torchvision(torch_home, "ResNet18_Weights.IMAGENET1K_V1")
    done = run_main("-dataset", "imagenet", "-data", jpeg_root, "-testOnly", "true",
                    "-weights", "ResNet18_Weights.IMAGENET1K_V1", "-gen", str(tmp_path / "gen"),
                    env={**os.environ, "TORCH_HOME": str(torch_home)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "=> warning: the network has 1000 outputs for 3 classes" in done.stdout
    assert " * Results top1:" in done.stdout
    assert math.isfinite(float(done.stdout.split(" * Results top1:")[1].split()[0]))


def test_extract_features_takes_a_name_and_gives_the_weights_features(
    jpeg_root, torch_home, tmp_path
):
    reference = cache_torchvision(torch_home, "ResNet18_Weights.IMAGENET1K_V1")
    folder = os.path.join(jpeg_root, "val")
    output = tmp_path / "features.pt"
    done = python(os.path.join(ROOT, "scripts", "extract_features.py"),
                  "-weights", "ResNet18_Weights.IMAGENET1K_V1", folder, "-o", str(output),
                  env={**os.environ, "TORCH_HOME": str(torch_home)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = torch.load(output, weights_only=True)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import inference

    view = inference.View("imagenet", 256, 224, "bilinear")  # torchvision's evaluation
    first = inference.preprocess(saved["image_list"][0], view)
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = reference(first[None])[0]
    assert saved["features"].shape == (5, 512)
    assert (saved["features"][0] - expected).abs().max() < 1e-4


def test_under_torchrun_rank_0_fetches_and_says_it_once_and_every_rank_loads_the_weights(
    jpeg_root, torch_home, tmp_path
):
    cache_torchvision(torch_home, "ResNet18_Weights.IMAGENET1K_V1")
    save = tmp_path / "save"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", MAIN, "-dataset", "imagenet", "-data", jpeg_root, "-nThreads", "0",
               "-weights", "ResNet18_Weights.IMAGENET1K_V1", "-resetClassifier", "true",
               "-frozenStages", "4", "-cropSize", "64", "-batchSize", "6", "-nEpochs", "1",
               "-save", str(save), "-gen", str(tmp_path / "gen")]  # fmt: skip
    done = runs.process_run(command, env={**os.environ, "TORCH_HOME": str(torch_home)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("=> Weights ResNet18_Weights.IMAGENET1K_V1 (torchvision)") == 1
    trained = torch.load(save / "model_1.pth", weights_only=True)["model"]
    cached = torch.load(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert torch.equal(trained["layer4.1.conv2.weight"], cached["layer4.1.conv2.weight"])


def test_a_damaged_cached_file_is_named_with_what_to_do(torch_home):
    named = pretrained.resolve("ResNet18_Weights.IMAGENET1K_V1")
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"half a download")
    with pytest.raises(pretrained.WeightsUnavailable) as raised:
        pretrained.fetch(named, False)
    assert str(raised.value).startswith(
        f"cannot read {folder}/resnet18-f37072fd.pth (ResNet18_Weights.IMAGENET1K_V1): delete it"
    )


def test_a_cached_file_of_other_tensors_is_named_as_the_fault(jpeg_root, torch_home, tmp_path):
    """A file of ResNet-34's weights where ResNet-18's belong: the cached file is wrong, not
    the user's flags (the same exit status as classify.py's)."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    other = torchvision.models.resnet34().state_dict()
    torch.save(other, folder / "resnet18-f37072fd.pth")
    done = run_main("-dataset", "imagenet", "-data", jpeg_root, "-weights",
                    "ResNet18_Weights.IMAGENET1K_V1", "-save", str(tmp_path / "save"),
                    "-gen", str(tmp_path / "gen"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"error: the cached file {folder}/resnet18-f37072fd.pth does not hold the tensors of"
        " ResNet18_Weights.IMAGENET1K_V1"
    )
    assert "delete it to download it again" in done.stderr
    assert not (tmp_path / "save").exists()
    script = os.path.join(ROOT, "scripts", "classify.py")
    image = next(iter(sorted(glob.glob(os.path.join(jpeg_root, "val", "*", "*")))))
    classified = python(script, "-weights", "ResNet18_Weights.IMAGENET1K_V1", image,
                        env=dict(os.environ))  # fmt: skip
    assert classified.returncode == 2 and "does not hold the tensors" in classified.stderr


def test_a_damaged_hub_snapshot_is_named_with_what_to_do(jpeg_root, tmp_path):
    hf_home = tmp_path / "hf"
    hub_snapshot(hf_home, "timm/resnet18.a1_in1k", {})
    snapshot = next((hf_home / "hub").glob("models--timm--resnet18.a1_in1k/snapshots/*"))
    (snapshot / "model.safetensors").write_bytes(b"not safetensors")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = runs.main_process(["-dataset", "imagenet", "-data", jpeg_root, "-weights",
                              "timm/resnet18.a1_in1k", "-save", tmp_path / "save"], env=env)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot read the cached timm/resnet18.a1_in1k")
    assert "delete" in done.stderr and "models--timm--resnet18.a1_in1k" in done.stderr


@pytest.mark.parametrize(
    "name", ["ResNet50_Weights.IMAGENET1K_V2", "ResNet18_Weights.IMAGENET1K_V1"]
)
def test_the_val_images_are_prepared_as_torchvisions_transform_of_the_weights(name, jpeg_root):
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    sizes = pretrained.resolve(name).preprocessing
    # Decoded whole (this tool's loaders decode large JPEGs at 1/2..1/8 scale when the resize
    # shrinks them at least that much: PIL's draft mode, not bit-identical to a resize).
    sample = folder_samples.ValSample(False, size=sizes.crop, scale=sizes.resize, draft=False,
                                interpolation=sizes.interpolation)  # fmt: skip
    folder = os.path.join(jpeg_root, "val", "apple")
    with Image.open(os.path.join(folder, sorted(os.listdir(folder))[0])) as image:
        ours, _ = sample(image)
        theirs = torchvision.models.get_weight(name).transforms()(
            TF.pil_to_tensor(image.convert("RGB"))
        )
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (sizes.mean, sizes.std))
    # torchvision's preset resizes in float and rounds; its v2 uint8 kernel, used here, can
    # land one step of 255 away.
    difference = ((ours.float() / 255 - mean) / std - theirs).abs() * std * 255
    assert difference.max() < 1.001 and difference.mean() < 0.25
