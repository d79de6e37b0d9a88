"""The saved runs an experiment reads: the run folders of a sweep (or one run) and whether their weights are usable.

A sweep's runs are those :func:`resgrad.sweeps.folder.sweep_runs` lists (its grid's points, then the
finished runs of its earlier grids), as for ``resgrad report`` and ``export``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.config import TrainConfig
from resgrad.errors import UsageError
from resgrad.files import atomic_dir, write_bytes, write_csv
from resgrad.rundir import check_run, read_summary
from resgrad.sweeps.folder import sweep_runs


@dataclass
class SavedRun:
    """A run folder: its config, its summary.json (None when unreadable) and whether it kept its weights."""

    path: Path
    config: TrainConfig
    summary: dict[str, Any] | None
    damage: str | None = None  # why the folder cannot be read, found before it is used

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status") or "missing"

    @property
    def has_weights(self) -> bool:
        return (self.path / "model.pt").is_file()

    def unusable(self) -> str | None:
        """Why the run's trained weights cannot be used (not complete, no model.pt, damaged); None if they can."""
        if self.damage:
            return f"damaged: {self.damage}"
        if self.status != "complete":
            return f"{self.status}, not complete"
        if not self.has_weights:
            if "model.pt" in ((self.summary or {}).get("files") or {}):
                return "damaged: model.pt is missing"
            return "no model.pt (made before resgrad saved weights)"
        problem = check_run(self.path, self.summary)
        return f"damaged: {problem}" if problem else None


def _read_config(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())).validate()
    except (OSError, ValueError, TypeError, AttributeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{run_dir} is not a run folder: it has no readable config.json.") from None


def saved_runs(path: str | os.PathLike[str]) -> tuple[list[SavedRun], bool]:
    """The run folders of a sweep folder (:func:`~resgrad.sweeps.folder.sweep_runs`, in that order) or the one run folder ``path``.

    Returns the runs (present folders only) and whether ``path`` is a sweep folder.
    Raises ``UsageError`` when ``path`` is neither.
    """
    path = Path(path)
    if (path / "sweep.json").is_file():
        runs = []
        for config in sweep_runs(path):
            run_dir = path / "runs" / config.run_id()
            if (run_dir / "config.json").is_file():
                try:
                    runs.append(SavedRun(run_dir, _read_config(run_dir), read_summary(run_dir)))
                except UsageError:  # left out by name, as a damaged run is: the sweep's grid says what it was
                    runs.append(SavedRun(run_dir, config, read_summary(run_dir), "config.json cannot be read"))
        return runs, True
    if (path / "config.json").is_file():
        return [SavedRun(path, _read_config(path), read_summary(path))], False
    raise UsageError(
        f"{path} is neither a sweep folder (with sweep.json) nor a run folder (with config.json); "
        "give one made by `resgrad sweep` or `resgrad train`."
    )


def usable_runs(runs: list[SavedRun], path: Path, is_sweep: bool, done: str) -> tuple[list[SavedRun], list[str]]:
    """The complete runs with weights, and a one-line reason for every other run.

    Args:
        runs, is_sweep: what :func:`saved_runs` returned for ``path``.
        done: what the experiment does to a run, for the error (``lesioned``).

    Raises:
        UsageError: no run is usable.
    """
    usable, skipped = [], []
    for run in runs:
        why = run.unusable()
        if why:
            skipped.append(f"{run.path.name}: {why}")
        else:
            usable.append(run)
    if not usable:
        if not is_sweep and runs:
            raise UsageError(
                f"run folder {path} cannot be {done}: {runs[0].unusable()}; "
                "only complete runs with their model.pt can (rerun it with `resgrad train --force`)."
            )
        reasons = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise UsageError(
            f"sweep folder {path} holds no complete run with saved weights (model.pt) "
            f"({reasons or 'no run folders'}); rerun it with `resgrad sweep ... --force`."
        )
    return usable, skipped


# ---------------------------------------------------------------- where an experiment writes


def output_beside(path: str | os.PathLike[str], kind: str) -> Path:
    """``SWEEP_DIR/<kind>``; for a run folder ``RUN_DIR-<kind>`` beside it (a run folder holds only its run)."""
    path = Path(path)
    return path / kind if (path / "sweep.json").is_file() else path.with_name(f"{path.name}-{kind}")


def write_study(
    out: Path, kind: str, tables: dict[str, pd.DataFrame], figures: dict[str, tuple[str, bytes, str]]
) -> list[Path]:
    """An experiment's CSV files (``tables``: name -> frame) and figures (name -> (heading, PNG, caption)) in ``out``,
    swapped in whole as a ``kind`` folder; returns the paths, the CSV files first."""
    with atomic_dir(out, kind) as tmp:
        for name, frame in tables.items():
            write_csv(tmp / name, frame)
        for name, (_, data, _) in figures.items():
            write_bytes(tmp / f"{name}.png", data)
    return [*(out / name for name in tables), *(out / f"{name}.png" for name in figures)]
