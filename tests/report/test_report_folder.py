"""`resgrad report` keeps a user's files in its --out folder, and names a damaged run while it reports the rest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_sweep, one_sentence, run_cli, snapshot


def test_report_into_a_folder_with_a_report_md_and_other_files_keeps_them(tiny_sweep: Path, tmp_path: Path) -> None:
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# my own report\n")
    (mine / "thesis.tex").write_text("\\begin{document}\n")
    before = snapshot(mine)
    code, err = run_cli(["report", str(tiny_sweep), "--out", str(mine)])
    assert code == 2
    line = one_sentence(err, "report")
    assert f"{mine} also holds files resgrad did not write (thesis.tex)" in line and "move them away" in line
    assert snapshot(mine) == before


def test_report_names_a_damaged_run_and_reports_the_rest(
    tiny_sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    damaged, whole = sorted((sweep / "runs").iterdir())
    with open(damaged / "grad_norms.parquet", "r+b") as f:
        f.truncate(300)
    with caplog.at_level(logging.WARNING, logger="resgrad.report.sweepdata"):
        code, err = run_cli(["report", str(sweep), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    assert f"run {damaged.name} is damaged (grad_norms.parquet has 300 bytes" in caplog.text
    runs = pd.read_csv(tmp_path / "rep" / "tables" / "runs.csv").set_index("run_id")
    assert runs.loc[damaged.name, "status"] == "failed"
    assert runs.loc[damaged.name, "error"].startswith("run folder damaged: grad_norms.parquet has 300 bytes")
    assert runs.loc[whole.name, "status"] == "complete"
    table = pd.read_csv(tmp_path / "rep" / "tables" / "by_arch_depth.csv").set_index("depth")
    depth = {run: json.loads((run / "config.json").read_text())["depth"] for run in (damaged, whole)}
    assert table.loc[depth[damaged], ["n_complete", "n_failed"]].tolist() == [0, 1]  # counted like a failed run
    assert table.loc[depth[whole], ["n_complete", "n_failed"]].tolist() == [1, 0]
