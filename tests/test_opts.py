"""opts.py against the Lua's opts.lua: names, types, defaults, validation."""

import os
import re

import hypothesis
import pytest
import runs
from hypothesis import strategies as st

import opts
from run import plan

# Section 1: every Lua flag with its default (ResNeXt fork's where they differ).
LUA_FLAGS = {
    "data": "",
    "dataset": "imagenet",
    "manualSeed": 0,
    "nGPU": 1,
    "backend": "cudnn",
    "cudnn": "fastest",
    "gen": "gen",
    "precision": "single",
    "nThreads": 2,
    "epochNumber": 1,
    "batchSize": 32,
    "testOnly": False,
    "tenCrop": False,
    "save": "checkpoints",
    "resume": "none",
    "LR": 0.1,
    "momentum": 0.9,
    "weightDecay": 1e-4,
    "netType": "resnext",
    "bottleneckType": "resnext_C",
    "baseWidth": 64,
    "cardinality": 1,
    "shortcutType": "",
    "retrain": "none",
    "optimState": "none",
    "shareGradInput": False,
    "optnet": False,
    "resetClassifier": False,
    "nClasses": 0,
}


def parse_ok(*argv):
    return plan.parse(["-dataset", "cifar10", *argv])


def test_every_lua_flag_exists_with_its_default():
    parsed = parse_ok()
    for name, default in LUA_FLAGS.items():
        if name != "dataset":
            assert getattr(parsed, name) == default, name
    assert type(parsed.LR) is float and type(parsed.batchSize) is int and type(parsed.depth) is int


@pytest.mark.parametrize(
    ("argv", "epochs", "depth"),
    [
        (["-dataset", "cifar10"], 300, 29),
        (["-dataset", "cifar100", "-netType", "resnet"], 300, 20),
        (["-dataset", "cifar10", "-netType", "preresnet", "-nEpochs", "164"], 164, 20),
        (["-dataset", "fashionmnist", "-depth", "56", "-netType", "resnet"], 300, 56),
    ],
)
def test_per_dataset_defaults_are_resolved(argv, epochs, depth):
    parsed = plan.parse(argv)
    assert (parsed.nEpochs, parsed.depth) == (epochs, depth)


def test_imagenet_defaults(tmp_path):
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    parsed = plan.parse(["-data", str(tmp_path)])
    assert (parsed.nEpochs, parsed.depth, parsed.netType) == (100, 50, "resnext")
    assert plan.parse(["-data", str(tmp_path), "-netType", "resnet"]).depth == 34


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-testOnly", "true"], True),
        (["-testOnly", "false"], False),
        (["-testOnly"], True),
        (["--testOnly", "True"], True),
        (["-testOnly", "0"], False),
        ([], False),
    ],
)
def test_booleans_take_the_lua_form_and_the_bare_flag(argv, expected):
    assert parse_ok(*argv).testOnly is expected


def test_double_dash_spelling_also_works():
    parsed = parse_ok("--depth", "38", "--batchSize", "64", "--LR", "0.05")
    assert (parsed.depth, parsed.batchSize, parsed.LR) == (38, 64, 0.05)


def test_help_lists_every_flag_with_default():
    out = runs.main_run(["-h"])
    assert out.returncode == 0
    for name in LUA_FLAGS:
        assert f"-{name}" in out.stdout, name
    text = " ".join(out.stdout.split())
    assert "initial learning rate (default: 0.1)" in text and "(default: resnext_C)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-dataset", "mnist"],
            "unknown -dataset mnist (options: imagenet, cifar10, cifar100, fashionmnist)",
        ),
        (["-dataset", "imagenet"], "missing ImageNet data directory"),
        (
            ["-dataset", "imagenet", "-data", "/does/not/exist"],
            "missing ImageNet data directory: /does/not/exist",
        ),
        (["-dataset", "cifar10", "-data", "/does/not/exist"], "data directory not found"),
        (
            ["-shareGradInput", "true", "-optnet", "true"],
            "cannot use both -shareGradInput and -optnet",
        ),
        (["-batchSize", "0"], "-batchSize must be positive"),
        (["-batchSize", "-4"], "-batchSize must be positive"),
        (["-nEpochs", "-1"], "-nEpochs must be positive"),
        (["-printFreq", "0"], "-printFreq must be auto or positive"),
        (["-decodeOnDevice", "true"], "-decodeOnDevice is for folder datasets"),
        (["-cropSize", "256"], "-cropSize is for folder datasets"),
        (["-batchSize", "12x"], "invalid int value: '12x'"),
        (["-LR", "fast"], "invalid float value: 'fast'"),
        (["-LR", "inf"], "invalid float value: 'inf'"),
        (["-LR", "0"], "-LR must be positive"),
        (["-testOnly", "maybe"], "expected true or false"),
        (["-depthh", "50"], "unknown flag -depthh"),
        (["-sav", "x"], "unknown flag -sav"),  # no prefix matching, single or double dash
        (["-batch", "8"], "unknown flag -batch"),
        (["--batch=8"], "unknown flag --batch"),
        (["-save", "a", "--save", "b"], "-save is given twice"),
        (["-momentum", "1"], r"-momentum must be in [0, 1), got 1.0"),
        (["-momentum", "-0.5"], r"-momentum must be in [0, 1)"),
        (["-nThreads", "100000"], "-nThreads 100000 is more loader processes than this machine"),
        (["-nEpochs", "5", "-epochNumber", "6"], "-epochNumber 6 is beyond -nEpochs 5"),
        (["-batchSize", "99999999999999999999"], "argument -batchSize/--batchSize: invalid int"),
        (["-depth", "3000000000"], "argument -depth/--depth: invalid int"),
        (["-manualSeed", "-1"], "argument -manualSeed/--manualSeed: invalid seed"),
        (["-netType", "vgg"], "unknown -netType vgg"),
        (["-precision", "quad"], "unknown -precision quad"),
        (["-cudnn", "slow"], "unknown -cudnn slow"),
        (["-memoryFormat", "nhwc"], "unknown -memoryFormat nhwc"),
        (["-hostAllocator", "jemalloc"], "unknown -hostAllocator jemalloc"),
        (["-nThreads", "-1"], "-nThreads must not be negative"),
        (["-preciseBN", "-8"], "-preciseBN must not be negative"),
        (["-resume", "/does/not/exist"], "-resume directory not found"),
        (["-retrain", "/does/not/exist.pth"], "-retrain file not found"),
        (["-optimState", "/does/not/exist.pth"], "-optimState file not found"),
        (["-tenCrop", "true"], "-tenCrop is for ImageNet-style"),
        (
            ["-shardSource", "pipe:cat {shard}"],
            "-shardSource is for -dataset imagenet data"
            " (tar shards, Hugging Face files); -dataset"
            " cifar10 reads its own files: drop -shardSource",
        ),
        (["-imageColumn", "img"], "-imageColumn is for -dataset imagenet data"),
        (["-dataset", "fashionmnist", "-labelColumn", "y"], "-dataset fashionmnist reads its own"),
        (["-shuffleBuffer", "64"], "-shuffleBuffer is for -dataset imagenet data"),
    ],
)
def test_bad_input_raises_a_usage_error_saying_what_to_fix(argv, message):
    argv = argv if "-dataset" in argv else ["-dataset", "cifar10", *argv]
    with pytest.raises(opts.UsageError, match=re.escape(message)):
        plan.parse(argv)


def test_given_flags_are_listed_and_reset_classifier_defaults_to_the_dataset(tmp_path):
    parsed = parse_ok("-resetClassifier", "true", "--LR=0.01", "-momentum", "0")
    assert parsed.given == ["dataset", "resetClassifier", "LR", "momentum"]
    assert parsed.nClasses == 0 and parsed.momentum == 0.0  # 0: the data's class count
    assert plan.parse(["-dataset", "cifar10", "-testOnly", "-epochNumber", "9", "-nEpochs", "1"])


def test_imagenet_needs_train_and_val_folders(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    done = runs.main_run(["-data", tmp_path / "data", "-save", tmp_path / "run", "-nGPU", "0",
                          "-gen", tmp_path / "gen", "-tensorboard", "false"])  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: ImageNet missing `val` directory: {tmp_path / 'data' / 'val'} (class folders,"
        " tar shards or Hugging Face parquet files: see docs/data.md)"
    ]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_ten_crop_needs_ten_images_per_batch(tmp_path):
    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    with pytest.raises(opts.UsageError, match="at least 10"):
        plan.parse(["-data", str(tmp_path), "-tenCrop", "true", "-batchSize", "8"])


FLAG_NAMES = [f"-{name}" for name, *_ in opts.FLAGS] + ["--depth", "-h2", "--", "-", "-LR"]
TOKENS = st.one_of(
    st.sampled_from(FLAG_NAMES),
    st.sampled_from(["true", "false", "0", "-1", "1e309", "nan", "cifar10", "imagenet", "A", ""]),
    st.text(max_size=8),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(TOKENS, max_size=8))
def test_any_argument_list_gives_options_or_a_usage_error(argv):
    try:
        parsed = plan.parse(argv)
    except opts.UsageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert parsed.batchSize > 0 and parsed.nEpochs > 0 and parsed.dataset in plan.NAMES.datasets


def test_main_turns_a_usage_error_into_exit_2_and_one_line(capsys):
    import main

    assert main.main(["-dataset", "cifar10", "-batchSize", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: -batchSize must be positive, got 0\n"


def test_help_groups_every_flag_once_under_a_heading_the_luas_first():
    options = opts
    sections = [name for names in options.SECTIONS.values() for name in names]
    assert sorted(sections) == sorted(name for name, *_ in options.FLAGS)  # each once
    for title, entries in options.help_order():
        new = ["(new)" in text for _, _, _, text in entries]
        assert new == sorted(new), title  # the Lua's flags, then the new ones
    shown = runs.main_run(["-h"]).stdout
    headings = [line[:-1] for line in shown.splitlines() if line in
                {f"{title}:" for title in options.SECTIONS}]  # fmt: skip
    assert headings == list(options.SECTIONS)
    assert shown.index("\ndata:\n") < shown.index("  -data DATA") < shown.index("\nnetwork:\n")
