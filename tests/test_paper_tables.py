"""scripts/<table>.sh: every network of every paper table builds (DRY_RUN=1) with the
published size, and the runs use the Lua READMEs' batch and LR for the GPU count."""

import os
import re
import sys

import pytest
import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import paper_tables  # noqa: E402

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
