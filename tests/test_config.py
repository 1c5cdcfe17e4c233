"""-config FILE: a JSON or YAML file of flags; a run's own opts.json replays the run; the
command line wins; what names files, folders or commands is the command line's alone."""

import json
import os

import pytest
import runs
from test_cli import small_cifar_args
from test_crash import final_weights

import opts as options
from run import plan

FLAGS = "-nEpochs 2 -batchSize 4 -LR 0.002 -optimizer adamw -labelSmoothing 0.1 -manualSeed 3"
OWN = ("save", "config", "configFile")  # what differs between a run and its replay


def run_main(*argv):
    done = runs.main_run([str(word) for word in argv])
    assert done.returncode == 0, done.stderr
    return done


def test_a_runs_opts_json_replays_the_run_bitwise(cifar10_root, tmp_path):
    first, replay = tmp_path / "first", tmp_path / "replay"
    run_main(*small_cifar_args(cifar10_root, first, FLAGS))
    config = first / "opts.json"
    done = run_main("-config", config, "-data", cifar10_root, "-save", replay)
    recorded = [json.loads((run / "opts.json").read_text()) for run in (first, replay)]
    assert {k: v for k, v in recorded[0].items() if k not in OWN} == {
        k: v for k, v in recorded[1].items() if k not in OWN
    }
    assert recorded[1]["config"] == str(config)
    assert recorded[1]["configFile"] == json.loads(config.read_text())  # the file, whole
    assert f"=> -config {config}: " in done.stdout
    assert f"not taken from a file: -save {first}" in done.stdout
    theirs, ours = final_weights(first, epoch=2), final_weights(replay, epoch=2)
    assert all((theirs[k] == ours[k]).all() for k in theirs)


def test_the_command_line_wins_and_yaml_is_read(tmp_path):
    (tmp_path / "flags.yaml").write_text("LR: 0.05\ndepth: 8\nnetType: resnet\nlrSteps: [3, 6]\n"
                                         "lrSchedule: step\nerasingAspect: [0.3, 3.3333333333]\n"
                                         "shortcutType: A\n")  # fmt: skip
    opts = plan.parse(
        ["-dataset", "cifar10", "-config", str(tmp_path / "flags.yaml"), "-LR", "0.2"]
    )
    assert (opts.LR, opts.depth, opts.netType, opts.lrSteps) == (0.2, 8, "resnet", (3, 6))
    assert opts.erasingAspect == (0.3, 3.3333333333)  # floats exact, not as %g prints them
    assert sorted(opts.configured) == ["depth", "erasingAspect", "lrSchedule", "lrSteps",
                                       "netType", "shortcutType"]  # fmt: skip


def test_a_file_from_someone_else_chooses_no_folder_file_or_command(cifar10_root, tmp_path):
    """-save with -overwrite in a file would delete another run; -shardSource may be a shell
    command: neither is taken from a file, and the run says so."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "opts.json").write_text("{}")
    (victim / "metrics.jsonl").write_text("precious\n")
    config = tmp_path / "hostile.json"
    config.write_text(json.dumps({"save": str(victim), "overwrite": True, "resume": str(victim),
                                  "gen": str(victim), "shardSource": "pipe:touch {shard}",
                                  "retrain": str(victim / "x.pth"), "nEpochs": 1}))  # fmt: skip
    done = run_main(*small_cifar_args(cifar10_root, tmp_path / "run", f"-config {config}"))
    assert (victim / "metrics.jsonl").read_text() == "precious\n"
    assert sorted(os.listdir(victim)) == ["metrics.jsonl", "opts.json"]
    assert "not taken from a file: -save" in done.stdout and "-overwrite true" in done.stdout


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ('{"LR": 0.1, "learningRate": 2}', "f.json", "unknown flags learningRate (see -h)"),
        ("[1, 2]", "f.json", "must hold flag names and their values"),
        ('{"LR": ', "f.json", "is not valid: Expecting value"),
        ('{"LR": {"a": 1}}', "f.json", "-LR must be a number, a string, true/false or a list"),
        ('{"LR": -1}', "f.json", "-LR must be positive, got -1.0"),
        ("LR: [", "f.yaml", "is not valid"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(options.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan.parse(["-dataset", "cifar10", "-config", str(tmp_path / name)])


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    import main

    assert main.main(["-config", str(tmp_path / "none.json"), "-save", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: -config {tmp_path / 'none.json'}: No such file or directory\n"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(runs.ROOT, "docs", "configs"))))
def test_each_example_config_sets_its_recipe(name, jpeg_root, fashion_root):
    path = os.path.join(runs.ROOT, "docs", "configs", name)
    values = options.read_config(path)
    data = jpeg_root if values["dataset"] == "imagenet" else fashion_root
    opts = plan.parse(["-config", path, "-data", data])
    assert {key: getattr(opts, key) for key in values} == values
    assert options.recipe_summary(opts).startswith(f"=> -recipe {values['recipe']}: -batchSize")
