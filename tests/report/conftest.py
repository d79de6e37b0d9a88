"""A small real sweep shared by the report tests that read figures and pages (tests/report/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """plain and residual, depths 8 and 14, width 2, seeds 0 and 1: 8 real runs of 12 steps, each evaluated after
    every step (so that the report's test-accuracy table has 12 columns)."""
    out = tmp_path_factory.mktemp("small") / "sweep"
    spec = SweepSpec(
        grid={"arch": ["plain", "residual"], "depth": [8, 14], "width": [2], "seed": [0, 1]},
        fixed=dict(
            steps=12,
            train_subset=128,
            test_subset=100,
            record_every=3,
            eval_every=1,
            threads=1,
            device="cpu",
            data_dir=str(data_dir),
        ),
    )
    summary = run_sweep(spec, out, progress=False)
    assert list(summary["status"]) == ["complete"] * 8
    return out
