"""`resgrad sweep` through make, CI or a pipe (stderr not a terminal): a line per finished run; --quiet: none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import exit_code


def _argv(out: Path) -> list[str]:
    return ["sweep", "--out", str(out), "--archs", "plain", "residual", "--depths", "8", "--widths", "2"]


def _tiny(data_dir: Path) -> list[str]:
    return ["--steps", "2", "--train-subset", "64", "--test-subset", "50", "--threads", "1", "--device", "cpu"] + [
        "--data-dir",
        str(data_dir),
    ]


@pytest.mark.slow
def test_a_sweep_prints_a_line_per_finished_run_and_none_when_quiet(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code([*_argv(tmp_path / "a"), *_tiny(data_dir)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sweep: ")]
    assert len(lines) == 2, lines
    first = r"sweep: 1 of 2 runs done \(plain-d8-w2-s0-[0-9a-f]{6}: complete\), \d+ s elapsed, about \d+ s left"
    assert re.fullmatch(first, lines[0]), lines[0]
    assert re.fullmatch(r"sweep: 2 of 2 runs done \(residual-d8-w2-s0-[0-9a-f]{6}: complete\), \d+ s elapsed", lines[1])
    assert exit_code([*_argv(tmp_path / "b"), *_tiny(data_dir), "--quiet"]) == 0
    assert "runs done" not in capsys.readouterr().err
