"""The docs stay true: results/README.md is what results/make_docs.py makes from the committed results,
every Python block in README.md and docs/*.md runs, and what the docs list matches the code.

A Python block runs on its own (a fresh namespace) in a temporary folder holding ``results`` (a link to
the committed results: read them, never write there) and ``data`` (MNIST), with ``RESGRAD_DATA`` set.
Mark a block in the Markdown with an HTML comment on the line before its fence:

    <!-- docs-test: skip needs a CUDA GPU -->    never run here; the test skips and says why
    <!-- docs-test: slow -->                    longer than a few seconds: left out of `make test-fast`
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
from helpers import ROOT

from resgrad.cli import make_parser

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|slow)\b\s*(.*?)\s*-->")


def _load_make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "results" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_docs = _load_make_docs()


# ---------------------------------------------------------------- results/README.md is current


def test_results_readme_and_the_readme_tables_are_what_the_committed_results_give() -> None:
    for path, text in make_docs.render().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is not current: run `make results-docs`"


def test_check_mode_names_a_stale_file_and_writing_makes_it_current(tmp_path: Path, monkeypatch, capsys) -> None:
    page = tmp_path / "README.md"
    page.write_text("typed by hand\n")
    monkeypatch.setattr(make_docs, "ROOT", tmp_path)
    monkeypatch.setattr(make_docs, "render", lambda: {page: "generated\n"})
    assert make_docs.main(["--check"]) == 1
    assert "README.md is not current: run `make results-docs`" in capsys.readouterr().err
    assert page.read_text() == "typed by hand\n"  # --check writes nothing
    assert make_docs.main([]) == 0 and page.read_text() == "generated\n"
    assert make_docs.main(["--check"]) == 0


def test_a_placeholder_no_section_fills_is_an_error() -> None:
    with pytest.raises(KeyError, match="no section 'nosuch'"):
        make_docs._values([("nosuch", "x")])
    with pytest.raises(KeyError, match="has no value 'nosuch'"):
        make_docs._values([("bench_h200", "nosuch")])


# ---------------------------------------------------------------- every Python block runs


def _blocks() -> list:
    params = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != "```python":
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARKER.search(before)
            marks = [pytest.mark.slow] if mark and mark[1] == "slow" else []
            skip = (mark[2] or "marked skip") if mark and mark[1] == "skip" else None
            rel = f"{path.relative_to(ROOT)}:{i + 1}"
            params.append(pytest.param(rel, "\n".join(lines[i + 1 : end]), skip, marks=marks, id=rel))
    return params


@pytest.mark.parametrize(("where", "code", "skip"), _blocks())
def test_python_block_runs(
    where: str, code: str, skip: str | None, tmp_path: Path, data_dir: Path, monkeypatch
) -> None:
    if skip:
        pytest.skip(f"{where}: {skip}")
    (tmp_path / "results").symlink_to(ROOT / "results", target_is_directory=True)
    (tmp_path / "data").symlink_to(data_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESGRAD_DATA", str(data_dir))
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_the_readme_shows_the_python_api_it_promises() -> None:
    code = "\n".join(p.values[1] for p in _blocks() if p.values[0].startswith("README.md"))
    for name in ("GradientRecorder", "build_model", "train(", "load_model", "load_sweep", "TrainConfig", "save_run"):
        assert name in code, f"no Python block in README.md uses {name}"


# ---------------------------------------------------------------- what the docs list is what the code has

COMMANDS = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_a_row_in_the_readme_and_a_section_in_the_cli_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "cli.md").read_text()
    for name in COMMANDS:
        assert f"| `resgrad {name}" in readme, f"README.md's command table has no row for `resgrad {name}`"
        assert re.search(rf"^## `resgrad {name}\b", guide, re.M), f"docs/cli.md has no section for `resgrad {name}`"


def test_every_flag_the_cli_guide_names_exists() -> None:
    guide = (ROOT / "docs" / "cli.md").read_text()
    for title, body in re.findall(r"^## `resgrad ([a-z-]+)[^\n]*\n(.*?)(?=^## |\Z)", guide, re.M | re.S):
        if title not in COMMANDS:  # a command another branch adds: checked once it is here
            continue
        flags = {s for a in COMMANDS[title]._actions for s in a.option_strings} | {"--debug"}
        body = re.sub(r"`(?:tensorboard|pip|python|pytest) [^`]*`", "", body)  # other programs' flags
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", body))
        assert named <= flags, f"docs/cli.md names flags `resgrad {title}` lacks: {sorted(named - flags)}"


def test_every_module_has_its_line_in_the_architecture_doc() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    src = ROOT / "src" / "resgrad"
    missing = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        if p.parent == src or p.name != "__init__.py"
        if f"`{p.relative_to(src)}`" not in text
    ]
    assert missing == [], f"docs/architecture.md does not say what these modules are for: {missing}"
