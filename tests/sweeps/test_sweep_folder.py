"""A sweep folder over reruns: damaged runs are named and rerun, whole ones kept, runs of earlier grids kept,
a user's files and temp names left alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_sweep, snapshot

from resgrad.errors import UsageError
from resgrad.report.sweepdata import load_sweep
from resgrad.rundir import check_run
from resgrad.sweeps.folder import SUMMARY_COLUMNS
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep


def _spec(sweep: Path) -> SweepSpec:
    return SweepSpec.from_dict(json.loads((sweep / "sweep.json").read_text()))


def test_summary_csv_has_the_listed_columns_and_a_row_per_run(tiny_sweep: Path) -> None:
    summary = pd.read_csv(tiny_sweep / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert sorted(summary.run_id) == sorted(p.name for p in (tiny_sweep / "runs").iterdir())


def test_a_sweep_never_replaces_a_run_folder_holding_a_user_file(tiny_sweep: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    run = sorted((sweep / "runs").iterdir())[0]
    (run / "notes.txt").write_text("mine")
    before = snapshot(sweep)
    with pytest.raises(UsageError, match=f"{run} also holds files resgrad did not write \\(notes.txt\\)"):
        run_sweep(_spec(sweep), sweep, force=True, progress=False)  # --force reruns every run: checked before the first
    assert snapshot(sweep) == before


def test_damaged_runs_are_named_and_rerun_and_the_whole_ones_kept(
    tiny_sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    cut, trimmed = sorted((sweep / "runs").iterdir())
    with open(cut / "grad_norms.parquet", "r+b") as f:  # truncate -s 300
        f.truncate(300)
    metrics = (trimmed / "metrics.csv").read_bytes()
    (trimmed / "metrics.csv").write_bytes(metrics[: len(metrics) - 7])  # cut in the middle of the last row
    spec = _spec(sweep)

    with caplog.at_level(logging.WARNING, logger="resgrad.sweeps.sweep"):
        again = run_sweep(spec, sweep, progress=False)
    assert (again.attrs["ran"], again.attrs["skipped"]) == (2, 0) and (again["status"] == "complete").all()
    assert f"{cut.name} is damaged (grad_norms.parquet has 300 bytes" in caplog.text
    assert f"{trimmed.name} is damaged (metrics.csv has {len(metrics) - 7} bytes" in caplog.text
    for run in (cut, trimmed):
        assert check_run(run) is None
        assert len(pd.read_csv(run / "metrics.csv")) == 4 and len(pd.read_parquet(run / "grad_norms.parquet"))

    whole = snapshot(sweep / "runs")
    assert run_sweep(spec, sweep, progress=False).attrs["ran"] == 0  # whole now: skipped, untouched
    assert snapshot(sweep / "runs") == whole


def test_a_narrower_grid_keeps_the_earlier_runs_in_sweep_json_summary_and_report(
    tiny_sweep: Path, tmp_path: Path
) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    both = pd.read_csv(sweep / "summary.csv")
    narrow = SweepSpec(
        grid={"arch": ["residual"], "depth": [8], "width": [2]},
        fixed=json.loads((sweep / "sweep.json").read_text())["fixed"],
    )
    result = run_sweep(narrow, sweep, progress=False)
    assert (result.attrs["ran"], result.attrs["skipped"], result.attrs["earlier"]) == (0, 1, 1)
    saved = json.loads((sweep / "sweep.json").read_text())
    assert saved["grid"]["depth"] == [8] and [e["grid"]["depth"] for e in saved["earlier"]] == [[8, 14]]
    assert sorted(pd.read_csv(sweep / "summary.csv").run_id) == sorted(both.run_id)
    assert sorted(load_sweep(sweep).runs.run_id) == sorted(both.run_id)

    # A third grid: the first grid's extra point stays listed through it.
    other = SweepSpec(
        grid={"arch": ["residual"], "depth": [8], "width": [2], "seed": [0]}, fixed={**narrow.fixed, "steps": 2}
    )
    run_sweep(other, sweep, progress=False)
    assert set(both.run_id) < set(pd.read_csv(sweep / "summary.csv").run_id)
    assert set(both.run_id) < set(load_sweep(sweep).runs.run_id)


def test_clean_up_touches_only_resgrads_temp_names(tiny_sweep: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    mine = [sweep / ".notes.tmp", sweep / "runs" / ".draft.tmp", sweep / ".old-stuff.old-12"]
    for path in mine:
        path.write_text("mine")
    (sweep / "runs" / ".my-folder.tmp").mkdir()
    (sweep / "runs" / ".my-folder.tmp" / "keep.txt").write_text("mine")
    ours = [sweep / ".resgrad-tmp-summary.csv-abc123", sweep / "runs" / ".resgrad-tmp-run-xyz"]
    ours[0].write_text("half")
    ours[1].mkdir()
    run_sweep(_spec(sweep), sweep, progress=False)
    assert all(p.read_text() == "mine" for p in mine)
    assert (sweep / "runs" / ".my-folder.tmp" / "keep.txt").read_text() == "mine"
    assert not any(p.exists() for p in ours)
