"""The documentation that is derived from the code is current."""

import math
import os
import re
import shlex

import pytest
from conftest import load_script

import opts
from run import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags_doc():
    """scripts/flags_doc.py as a module."""
    return load_script("flags_doc")


def test_docs_flags_md_is_what_the_parser_makes():
    with open(os.path.join(ROOT, "docs", "flags.md"), encoding="utf-8") as handle:
        assert handle.read() == flags_doc().page(), "run python scripts/flags_doc.py"


def test_every_flag_has_a_row_with_its_default_and_a_new_flag_without_text_is_refused(monkeypatch):
    script = flags_doc()
    page = script.page()
    for name, _, default, _ in opts.FLAGS:
        assert f"| `-{name}` | {script.default_text(default)} |" in page
    assert "| `-weightDecay` | `0.0001` |" in page and "| `-depth` | unset |" in page
    monkeypatch.setattr(opts, "FLAGS", [*opts.FLAGS, ("newFlag", int, 3, "a flag")])
    with pytest.raises(SystemExit, match="say what newFlag do"):
        script.page()


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, main.py's arguments) of every main.py command in the README's and docs' code
    blocks, continuation lines joined, quotes and comments read as the shell does, `...`
    left out."""
    pages = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(ROOT, "docs", name)
        for name in os.listdir(os.path.join(ROOT, "docs"))
        if name.endswith(".md")  # docs/results/ holds run records
    )
    commands = []
    for page in pages:
        with open(page, encoding="utf-8") as handle:
            blocks = handle.read().split("```")[1::2]  # the insides of the code blocks
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                if "main.py" not in line:
                    continue
                words = shlex.split(line, comments=True)  # as the shell reads it
                if "main.py" in words and words[0] in ("python", "torchrun", "srun"):
                    arguments = words[words.index("main.py") + 1 :]
                    commands.append((os.path.basename(page), [w for w in arguments if w != "..."]))
    return commands


def test_every_documented_command_has_known_flags_of_the_right_type():
    commands = documented_commands()
    assert len(commands) >= 15  # the README's and docs' examples were found
    for page, argv in commands:
        try:
            opts.given_flags(argv)
            opts.build_parser(plan.NAMES).parse_args(argv)
        except opts.UsageError as exc:
            raise AssertionError(f"{page}: main.py {' '.join(argv)}: {exc}") from None


def page_text(*path) -> str:
    """A page of the repository."""
    with open(os.path.join(ROOT, *path), encoding="utf-8") as handle:
        return handle.read()


def first_number(cell: str) -> float:
    """The figure a table cell starts with (bold or not)."""
    return float(re.match(r"\**([\d.]+)", cell.strip()).group(1))


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the rows of the markdown table whose header starts with header_start."""
    lines = text[text.index(header_start) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_readme_states_the_demos_measured_times_and_errors():
    readme, demo = page_text("README.md"), page_text("docs", "demo.md")
    minutes = [float(row[-1]) for row in table_rows(demo, "| machine (2 cores) |")]
    low, high = math.floor(min(minutes)), math.ceil(max(minutes))
    first_screen = readme.split("\n## ")[0]
    assert f"offline ({low}-{high} min on 2 CPU cores)" in first_screen
    assert f"It took {low} to {high} minutes" in readme
    runs = table_rows(readme, "| test top-1 error (%) after epoch:")
    settled = [first_number(cell) for row in runs for cell in row[3:6]]
    said = f"between {min(settled):.2f}% and {max(settled):.2f}%"
    assert said in readme and said.replace("between", "lay between") in demo.replace("\n", " ")
    for row in runs:  # bold marks the best epoch, the figure ' * Finished top1:' gives
        errors = [first_number(cell) for cell in row[1:]]
        bold = [i for i, cell in enumerate(row[1:]) if cell.startswith("**")]
        assert bold == [errors.index(min(errors))], row
