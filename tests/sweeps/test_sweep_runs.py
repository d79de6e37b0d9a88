"""One definition of a sweep's runs (resgrad.sweeps.folder.sweep_runs): report, lesion, shatter and export see
the same runs of a resumed sweep, the finished runs kept from an earlier grid included."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_sweep

from resgrad.experiments.lesion import LesionConfig, run_lesion
from resgrad.experiments.saved import saved_runs
from resgrad.experiments.shatter import ShatterConfig, run_shatter
from resgrad.integrations.tensorboard import export_tensorboard
from resgrad.report.sweepdata import load_sweep
from resgrad.sweeps.folder import sweep_runs
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep


def _seen(sweep: Path, data_dir: Path, logdir: Path) -> dict[str, dict[str, set[str]]]:
    """The runs each reader of a sweep considered: those it used and those it left out by name."""
    lesion = run_lesion(
        sweep, LesionConfig(max_deleted=1, draws=1, test_subset=20, device="cpu", data_dir=str(data_dir))
    )
    shatter = run_shatter(
        ShatterConfig(
            sweep=str(sweep),
            archs=["residual"],
            depths=[8],
            widths=[2],
            seeds=[0],
            images=2,
            distances=[0.1],
            device="cpu",
            data_dir=str(data_dir),
        ),
        progress=False,
    )
    export = export_tensorboard(sweep, logdir)
    trained = shatter[shatter.state == "trained"]
    return {
        "report": {"used": set(load_sweep(sweep).runs.run_id), "left out": set()},
        "saved_runs": {"used": {run.path.name for run in saved_runs(sweep)[0]}, "left out": set()},
        "lesion": {"used": set(lesion.frame.run_id), "left out": {line.split(":")[0] for line in lesion.skipped}},
        "shatter": {"used": set(trained.run_id), "left out": set()},
        "export": {"used": {p.name for p in export.written}, "left out": {n.split(":")[0] for n in export.skipped}},
    }


def test_a_resumed_sweep_with_runs_kept_from_an_earlier_grid_is_read_the_same_by_every_reader(
    tiny_sweep: Path, tmp_path: Path, data_dir: Path
) -> None:
    pytest.importorskip("tensorboard")
    sweep = copy_sweep(tiny_sweep, tmp_path)
    first = set(pd.read_csv(sweep / "summary.csv").run_id)
    fixed = json.loads((sweep / "sweep.json").read_text())["fixed"]
    narrow = SweepSpec(grid={"arch": ["residual"], "depth": [8], "width": [2]}, fixed=fixed)
    assert run_sweep(narrow, sweep, progress=False).attrs["earlier"] == 1
    (point,) = {c.run_id() for c in narrow.configs()}
    (kept,) = first - {point}  # depth 14: finished under the first grid, not in the current one
    assert [c.run_id() for c in sweep_runs(sweep)] == [point, kept]

    seen = _seen(sweep, data_dir, tmp_path / "tb1")
    assert seen == {name: {"used": {point, kept}, "left out": set()} for name in seen}

    # The kept run turns out failed: no longer a run of the sweep for any of them (runs of earlier grids are kept
    # only when finished), rather than listed by some and left out by name by others.
    summary = json.loads((sweep / "runs" / kept / "summary.json").read_text())
    (sweep / "runs" / kept / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "x"}))
    assert [c.run_id() for c in sweep_runs(sweep)] == [point]
    seen = _seen(sweep, data_dir, tmp_path / "tb2")
    assert seen == {name: {"used": {point}, "left out": set()} for name in seen}
