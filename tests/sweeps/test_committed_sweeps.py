"""The committed sweeps' TOML files still name their committed runs, so that `make results` resumes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resgrad.sweeps.folder import load_spec
from resgrad.sweeps.grid import LIST_FLAGS, RUN_KEYS, SweepSpec, read_config

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted(p for p in (ROOT / "sweeps").glob("*.toml") if (ROOT / read_config(p).get("out", "-")).is_dir())


def test_some_sweep_files_have_committed_results() -> None:
    assert {p.stem for p in COMMITTED} >= {"mnist-depth-sweep", "activation-sweep", "seed-resnet", "lesion"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_point_of_a_committed_sweep_file_is_a_committed_run(path: Path) -> None:
    """A default that changes the numbers (channels-last on the CPU) changes new runs' ids; the files pin the old."""
    opts = read_config(path)
    spec = SweepSpec(
        grid={option: opts[flag] for flag, option in LIST_FLAGS.items() if flag in opts},
        fixed={k: opts[k] for k in RUN_KEYS if k in opts},
    )
    runs = ROOT / opts["out"] / "runs"
    missing = [c.run_id() for c in spec.configs() if not (runs / c.run_id()).is_dir()]
    assert missing == [], f"{path.name}: {len(missing)} grid points have no committed run folder, e.g. {missing[:3]}"


@pytest.mark.parametrize(
    "folder", sorted(p.parent for p in (ROOT / "results").glob("*/sweep.json")), ids=lambda p: p.name
)
def test_a_committed_sweep_json_names_its_committed_runs(folder: Path) -> None:
    """Written before channels-last became the CPU's default, a sweep.json without the key reads as contiguous."""
    spec = load_spec(folder)
    assert spec.fixed["channels_last"] is False
    missing = [c.run_id() for c in spec.configs() if not (folder / "runs" / c.run_id()).is_dir()]
    assert missing == []


def test_a_sweep_json_written_now_reads_back_as_the_same_runs() -> None:
    spec = SweepSpec(grid={"arch": ["plain", "residual"], "depth": [8]}, fixed={"steps": 5})  # channels_last: auto
    written = spec.to_dict()
    assert written["fixed"] == {"channels_last": None, "steps": 5}
    again = SweepSpec.from_dict(json.loads(json.dumps(written)))
    assert [c.run_id() for c in again.configs()] == [c.run_id() for c in spec.configs()]
    assert all(c.channels_last is None for c in again.configs())
    older = SweepSpec.from_dict({"grid": written["grid"], "fixed": {"steps": 5}})  # as written before
    assert all(c.channels_last is False for c in older.configs())
    assert {c.run_id() for c in older.configs()}.isdisjoint(c.run_id() for c in spec.configs())
