"""scripts/<table>.sh: every network of every paper table builds (DRY_RUN=1) with the
published size, and the runs use the Lua READMEs' batch and LR for the GPU count."""

import gzip
import json
import os
import re
import sys

import pytest
import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import paper_tables  # noqa: E402

from errors import UsageError  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "paper_tables.py")

ROW = re.compile(r"\| (.+?) \| ([\d.]+) \| ([\d.]+|—) \| ([\d.]+|—) \| ([\d.]+|—) \| ([\d.]+) \|")


def table_script(name, **env):
    return runs.process_run(["bash", os.path.join(ROOT, "scripts", f"{name}.sh")],
                            env={**os.environ, "PYTHON": sys.executable, **env})  # fmt: skip


@pytest.mark.parametrize("name", sorted(paper_tables.TABLES))
def test_dry_run_builds_every_network_at_the_published_size(name):
    done = table_script(name, DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    rows = [ROW.fullmatch(line) for line in done.stdout.splitlines()[3:]]
    labels = [label for label, *_ in paper_tables.TABLES[name][2]]
    assert [row.group(1) for row in rows] == labels
    checked = 0
    for row in rows:
        params, published = float(row.group(2)), row.group(3)
        if published != "—":  # 1%, or the rounding of the published figure (1.7M: 0.05M)
            decimals = len(published.partition(".")[2])
            allowed = max(0.01 * float(published), 0.5 * 10**-decimals)
            assert abs(params - float(published)) <= allowed, row.group(0)
            checked += 1
        if row.group(4) != "—" and row.group(5) != "—":
            assert abs(float(row.group(4)) - float(row.group(5))) <= 0.05 * float(row.group(5))
    assert checked >= 2


@pytest.mark.parametrize(("n_gpu", "batch", "lr"), [(8, 128, 0.1), (4, 64, 0.05), (2, 32, 0.025),
                                                    (1, 16, 0.0125)])  # fmt: skip
def test_cifar_runs_follow_the_readme_batch_and_lr_per_gpu_count(n_gpu, batch, lr):
    _, recipe, rows = paper_tables.TABLES["resnext_table7"]
    label, arch, *_ = rows[1]
    line = paper_tables.command("resnext_table7", label, arch, recipe, n_gpu, "")

    def value(flag):
        return line[line.index(flag) + 1]

    assert value("-batchSize") == str(batch) and float(value("-LR")) == lr
    assert value("-cardinality") == "16" and value("-weightDecay") == "5e-4"
    assert (f"--nproc-per-node={n_gpu}" in line) == (n_gpu > 1)


def test_imagenet_tables_need_the_data_and_a_known_gpu_count():
    missing = table_script("resnext_table3", NGPU="8", DATA="")
    assert missing.returncode == 2 and missing.stderr.startswith("error: set DATA")
    odd = table_script("fb_cifar", NGPU="3")
    assert odd.returncode == 2 and odd.stderr == "error: NGPU must be 8, 4, 2 or 1, got 3\n"


def test_resnest_rows_train_at_the_papers_crop_sizes():
    _, recipe, rows = paper_tables.TABLES["resnest_table"]
    crops = []
    for label, arch, *_ in rows:
        line = paper_tables.command("resnest_table", label, arch, recipe, 8, "/data")
        crops.append(line[line.index("-cropSize") + 1] if "-cropSize" in line else "224")
    assert crops == ["224", "256", "320", "416"]


def test_random_erasing_dry_run_checks_every_command_of_the_table():
    done = table_script("random_erasing_table", DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    assert len(rows) == 2 * len(paper_tables.ERASING_ROWS)
    published = {row[0].lstrip("| "): float(row[2]) for row in rows}
    assert published["ResNet-20-baseline-seed0"] == 4.39 and published["WRN-28-10-RE-seed0"] == 3.65
    params = {row[0].lstrip("| "): float(row[1]) for row in rows}
    assert params["WRN-28-10-RE-seed0"] == 36.48 and params["ResNet-20-RE-seed0"] == 0.27
    baseline = rows[0][3]
    assert "-recipe random-erasing" in baseline and "-randomErasing 0" in baseline
    assert (
        "-shortcutType B" in baseline
        and "-resume checkpoints/random_erasing/fashionmnist/" in baseline
    )
    assert not os.path.exists(os.path.join(ROOT, "checkpoints", "random_erasing"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROWS": "ResNet-21"}, "ROWS names 'ResNet-21': give rows of ResNet-20"),
        ({"ROWS": "ResNet-20:cutout"}, "with :baseline or :RE"),
        ({"DATASET": "mnist"}, "DATASET must be fashionmnist, cifar10 or cifar100"),
        ({"FLAGS": "-erasingStyle paint"}, "-erasingStyle"),
    ],
)
def test_random_erasing_table_refuses_bad_settings(env, message):
    with pytest.raises(UsageError, match=message):
        paper_tables.erasing_table({"DRY_RUN": "1", **env})


def test_a_bad_setting_is_one_error_line_of_the_script():
    done = table_script("random_erasing_table", DRY_RUN="1", ROWS="ResNet-20:cutout")
    assert done.returncode == 2 and done.stderr.startswith("error: ROWS names 'ResNet-20:cutout'")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_a_row_runs_resumes_and_is_gathered_beside_the_paper(fashion_root, tmp_path):
    env = {"ROWS": "ResNet-20:RE", "SAVE": str(tmp_path), "SEED": "3",
           "FLAGS": f"-data {fashion_root} -nEpochs 2 -batchSize 8 -gen {tmp_path / 'gen'}"}  # fmt: skip
    done = table_script("random_erasing_table", **env)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "fashionmnist" / "ResNet-20-RE-seed3"
    options = json.loads((folder / "opts.json").read_text())
    assert options["lrSteps"] == [151, 226] and options["nesterov"] is False
    assert options["erasingStyle"] == "authors" and options["randomErasing"] == 0.5
    again = table_script("random_erasing_table", **env)  # a finished row: nothing more to train
    assert again.returncode == 0, again.stderr
    gathered = runs.process_run([sys.executable, SCRIPT, "gather", str(folder)])
    assert gathered.returncode == 0, gathered.stderr
    row = gathered.stdout.splitlines()[2].split(" | ")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    val = [r["top1"] for r in records if r["split"] == "val" and r.get("iter") is None]
    assert row[0] == "| ResNet-20-RE-seed3" and row[2] == "4.02" and row[4] == f"{val[-1]:.2f}"
    assert row[6] == "2 of 2" and row[7] == "3" and "cores), cpu, torch" in row[8]
    assert row[5] == f"{val[-1] - 4.02:+.2f}"


def test_gather_reads_checked_in_gzipped_records_and_shows_a_running_row(tmp_path):
    records = [{"split": "segment", "started": "2026-12-07T12:00:00Z", "cpu": "CPU X",
                "cores": 2, "device": "cpu", "torch": "2.14.1"},
               {"epoch": 1, "split": "val", "top1": 9.5, "iter": None, "seconds": 1800.0},
               {"split": "segment", "started": "2026-12-07T13:00:00Z", "cpu": "CPU X",
                "cores": 2, "device": "cpu", "torch": "2.14.1"},
               {"epoch": 2, "split": "val", "top1": 8.25, "iter": None, "seconds": 1800.0}]  # fmt: skip
    with gzip.open(tmp_path / "metrics.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    options = {"dataset": "fashionmnist", "nEpochs": 40, "randomErasing": 0.0, "manualSeed": 1,
               "arch": {"netType": "wrn", "depth": 28, "widenFactor": 10}}  # fmt: skip
    (tmp_path / "opts.json").write_text(json.dumps(options))
    row = paper_tables.gathered_rows([str(tmp_path)])[2].split(" | ")
    assert row[2:8] == ["4.01", "8.25 (2)", "8.25", "+4.24", "2 of 40 (running)", "1"]
    assert row[8] == "CPU X (2 cores), cpu, torch 2.14.1" and row[9] == "1.00 |"
