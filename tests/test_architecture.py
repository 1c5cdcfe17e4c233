"""The shape docs/architecture.md describes: main.py a table of contents, short functions,
and imports that go one way."""

import ast
import dataclasses
import glob
import importlib
import os

import pytest

import checkpoints
import opts
from run import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = sorted(
    os.path.relpath(path, ROOT)
    for pattern in (
        "*.py",
        "datasets/*.py",
        "models/*.py",
        "recipe/*.py",
        "run/*.py",
        "runtime/*.py",
        "trackers/*.py",
    )
    for path in glob.glob(os.path.join(ROOT, pattern))
)
SCRIPTS = sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "scripts", "*.py"))
)
PROJECT = {os.path.splitext(path)[0].split("/")[0] for path in PACKAGE}


def tree_of(path: str) -> ast.Module:
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return ast.parse(handle.read())


def project_imports(path: str) -> set[str]:
    """The modules of this project that path imports (top-level names)."""
    names = set()
    for node in ast.walk(tree_of(path)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & PROJECT


def test_main_is_a_table_of_contents():
    with open(os.path.join(ROOT, "main.py"), encoding="utf-8") as handle:
        assert len(handle.readlines()) < 200


def functions_of(paths):
    """(path, function node) of every function and method defined in paths."""
    for path in paths:
        for node in ast.walk(tree_of(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def parameter_count(node) -> int:
    """The parameters a caller may give (self and cls not counted; *args and **kw one each)."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    named = [name for name in names if name not in ("self", "cls")]
    return len(named) + (args.vararg is not None) + (args.kwarg is not None)


def test_no_function_of_the_package_or_scripts_is_longer_than_a_screen():
    long = [
        f"{path}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, node in functions_of(PACKAGE + SCRIPTS)
        if node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_no_signature_takes_more_than_eight_parameters():
    """More than eight is a record's fields passed one by one: pass the record."""
    wide = [
        f"{path}:{node.name} ({parameter_count(node)} parameters)"
        for path, node in functions_of(PACKAGE + SCRIPTS)
        if parameter_count(node) > 8
    ]
    assert wide == []


CARD = {"main.py", "opts.py", "train.py", "checkpoints.py"}
# Each room of the project and its floor: a module imports only from lower floors.
FLOORS = {"errors": 0, "progress": 0, "train": 1, "opts": 1, "runtime": 1, "checkpoints": 1,
          "trackers": 1, "datasets": 2, "models": 3, "recipe": 3, "run": 4, "main": 5}  # fmt: skip


def test_the_root_holds_the_cards_files_and_at_most_two_more():
    root = {os.path.basename(path) for path in glob.glob(os.path.join(ROOT, "*.py"))}
    assert CARD <= root and len(root - CARD) <= 2, sorted(root - CARD)


def test_no_module_imports_from_a_higher_floor():
    assert set(FLOORS) == PROJECT
    upward = [
        f"{path} imports {name}"
        for path in PACKAGE
        for name in project_imports(path)
        if FLOORS[name] >= FLOORS[path.split("/")[0].removesuffix(".py")]
        and name != path.split("/")[0].removesuffix(".py")
    ]
    assert upward == []


@pytest.mark.parametrize(
    "leaf", ["progress.py", "recipe/optimizers.py", "recipe/schedules.py", "errors.py"]
)
def test_the_leaf_modules_import_nothing_of_the_project(leaf):
    assert project_imports(leaf) == set()


def test_the_training_loop_imports_only_its_progress_printing():
    assert project_imports("train.py") == {"progress"}


def test_checkpoints_know_nothing_of_datasets_or_networks():
    assert project_imports("checkpoints.py") <= {"errors"}


def test_model_files_and_the_parser_take_the_same_interpolations():
    assert checkpoints.INTERPOLATIONS == opts.INTERPOLATIONS


def test_the_dataset_table_imports_nothing_so_the_parser_stays_light():
    assert project_imports("datasets/table.py") == set()


def test_the_option_parser_imports_no_model_or_dataset_module():
    assert project_imports("opts.py") <= {"errors"}


def test_only_the_plan_step_reads_the_parsed_options():
    readers = [
        f"{path}:{node.name}"
        for path in PACKAGE
        if path not in ("opts.py", "run/plan.py", "main.py")
        for node in ast.walk(tree_of(path))
        if isinstance(node, ast.FunctionDef) and "opts" in {a.arg for a in node.args.args}
    ]
    assert readers == []
    assert "opts" not in project_imports("main.py") and "opts" in project_imports("run/plan.py")


# The flags run/plan.py reads more than once, and why: every other flag becomes one field of
# one record (a fact held twice can disagree, and a step reading the copy misses a change).
READ_AGAIN = {
    "given": "which flags were typed",
    "dataset": "the data; the network's shape; the Lua schedule's rule; -weights' network",
    "netType": "the network; the Lua schedule's rule",
    "LR": "the Lua schedule's rule and the other schedules",
    "nEpochs": "the Lua schedule's rule and the other schedules",
    "device": "resolved with the machine; -device auto's fallback line",
    "nGPU": "resolving -device; the model's placement",
    "requeueSignal": "its error line",
    "warmupEpochs": "the schedule's warm-up and the -ema average's (torchvision's rule)",
}


def test_each_flag_becomes_one_field_of_one_record():
    reads = {}
    for node in ast.walk(tree_of("run/plan.py")):
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "opts":
            reads[node.attr] = reads.get(node.attr, 0) + 1
    assert {flag for flag, count in reads.items() if count > 1} <= set(READ_AGAIN)


def test_no_two_records_of_a_plan_hold_a_field_of_the_same_name():
    records = [plan.datasets.DataSpec, plan.setup.ModelSpec, plan.recipe.Recipe,
               plan.epochs.Loop, plan.Launch]  # fmt: skip
    seen = {}
    for record in [*records, plan.Plan]:
        for field in dataclasses.fields(record):
            if field.type not in records:  # (Plan's fields that are the records)
                seen.setdefault(field.name, []).append(record.__name__)
    assert {name: owners for name, owners in seen.items() if len(owners) > 1} == {}


CHECKPOINT_KEYS = {"modelPath", "optimState", "bestTop1", "bestTop5", "state", "ema",
                   "iteration", "samples", "modelFile", "optimFile", "epochSums"}  # fmt: skip


def test_only_checkpoints_reads_the_checkpoint_files_by_key():
    readers = []
    for path in PACKAGE:
        if path in ("checkpoints.py", "opts.py"):  # opts reads options by name, "ema" too
            continue
        for node in ast.walk(tree_of(path)):
            key = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "get" and node.args
                  and isinstance(node.args[0], ast.Constant)):  # fmt: skip
                key = node.args[0].value
            if key in CHECKPOINT_KEYS:
                readers.append(f"{path}:{node.lineno} {key}")
    assert readers == []


@pytest.mark.parametrize("path", PACKAGE)
def test_every_module_of_the_package_imports_with_this_torch(path):
    """What the lowest supported torch is checked with first (make test-lowest)."""
    name = os.path.splitext(path)[0].replace("/", ".").removesuffix(".__init__")
    assert importlib.import_module(name).__name__ == name
