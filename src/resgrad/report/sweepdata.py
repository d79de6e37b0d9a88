"""A sweep folder read into pandas frames: :class:`Sweep` and :func:`load_sweep`.

Reads what :mod:`resgrad.rundir` writes (``sweep.json``, ``runs/*/summary.json``,
``metrics.csv``, ``grad_norms.parquet``) and derives per-run numbers; the tables
over seeds are in :mod:`resgrad.report.tables`, the figures in :mod:`resgrad.report.figures`,
the page in :mod:`resgrad.report.page`.

Conventions used throughout:

- statistics over seeds are plain means and sample standard deviations that
  keep NaN and inf (a zero or non-finite gradient norm shows up as ``-inf``,
  ``inf`` or ``NaN``, never dropped);
- accuracy, loss, steps-to-90 % and everything at the last recorded step come
  from complete runs (a diverged run stops early, often on a non-finite record);
  the gradient ratio at the first recorded step (step 0) from every finished
  run, complete or diverged; diverged runs are counted in ``n_diverged``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from resgrad.config import facet_options
from resgrad.errors import UsageError
from resgrad.rundir import DONE, SUMMARY_KEYS, check_run, read_summary
from resgrad.rundir import STATUSES as RUN_STATUSES  # complete, diverged, failed
from resgrad.sweeps.folder import load_spec, sweep_runs
from resgrad.sweeps.grid import GRID_OPTIONS, SweepSpec

log = logging.getLogger(__name__)

STATUSES = (*RUN_STATUSES, "missing")  # a grid point without a run folder is "missing"
FINISHED = DONE  # runs that trained and left metrics and gradient norms
# Grid options that get their own facet rows/columns when a sweep varies them (arch, depth and seed have fixed roles).
FACET_OPTIONS = facet_options()  # declared with the TrainConfig fields (resgrad.config)
TARGET_ACC = 0.9
RUN_COLUMNS = [
    "run_id",
    *GRID_OPTIONS,
    "status",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "steps",
    "diverged_at_step",
    "first_recorded_step",
    "last_recorded_step",
    "log10_grad_ratio_first",
    "log10_grad_ratio_last",
    "updates_to_90pct_acc",
    "wall_seconds",
    "images_per_s",
    "params",
    "device_name",
    "torch_version",
    "resgrad_version",
    "error",
]
_SUMMARY_KEYS = tuple(k for k in SUMMARY_KEYS if k in RUN_COLUMNS and k not in ("run_id", "status"))
_NUMERIC = [
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "steps",
    "diverged_at_step",
    "first_recorded_step",
    "last_recorded_step",
    "log10_grad_ratio_first",
    "log10_grad_ratio_last",
    "updates_to_90pct_acc",
    "wall_seconds",
    "images_per_s",
    "params",
]
_COUNTS = ("steps", "diverged_at_step", "first_recorded_step", "last_recorded_step", "updates_to_90pct_acc", "params")


# ---------------------------------------------------------------- loading


def option_text(name: str, value: Any) -> str:
    """An option value as the report shows it (``lr`` in ``%g`` form)."""
    return f"{value:g}" if name == "lr" else str(value)


@dataclass
class Sweep:
    """A sweep folder as pandas frames.

    Attributes:
        path: the sweep folder.
        spec: its grid (``sweep.json``).
        runs: one row per grid point: ``run_id``, the grid options, ``status``
            (complete | diverged | failed | missing), the summary numbers and per-run
            derived numbers (``log10_grad_ratio_first/last``: log10 of the first over
            the last weighted layer's gradient norm at the first/last recorded step;
            ``updates_to_90pct_acc``: updates until the first evaluation with test
            accuracy >= 0.9, missing when never reached).
        metrics: every ``metrics.csv`` row of the finished runs, with ``run_id`` and the grid options.
        grad_norms: every ``grad_norms.parquet`` row of the finished runs, likewise; the norm itself
            is in column ``grad_norm`` (``norm`` in the parquet file), since ``norm`` here is the grid
            option (none | batch).
    """

    path: Path
    spec: SweepSpec
    runs: pd.DataFrame
    metrics: pd.DataFrame = field(repr=False)
    grad_norms: pd.DataFrame = field(repr=False)

    @property
    def facets(self) -> list[str]:
        """The options besides arch, depth and seed that take more than one value in this sweep."""
        return [o for o in FACET_OPTIONS if self.runs[o].nunique() > 1]

    @property
    def archs(self) -> list[str]:
        return list(dict.fromkeys(self.runs["arch"]))

    @property
    def depths(self) -> list[int]:
        return sorted(set(self.runs["depth"]))

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"].isin(FINISHED)]

    @property
    def steps_per_epoch(self) -> int | None:
        """Updates per epoch, when every complete run shares one value and some run trained past epoch 0."""
        m = self.metrics
        if m.empty:
            return None
        m = m[m["run_id"].isin(self.runs.loc[self.runs["status"] == "complete", "run_id"])]
        if m.empty or m["epoch"].max() < 1:
            return None
        per_run = m[m["epoch"] == 0].groupby("run_id").size()
        return int(per_run.iloc[0]) if per_run.nunique() == 1 else None

    def sort_key(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """A sort key for option values: numbers in numeric order, names in the order the sweep lists them."""
        key = []
        for name, value in values.items():
            if isinstance(value, str):
                listed = list(dict.fromkeys(self.runs[name]))
                key.append(listed.index(value) if value in listed else len(listed))
            else:
                key.append(value)
        return tuple(key)

    def combos(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, {option: value})`` per combination of the varied facet options; one unlabelled entry if none."""
        if not self.facets:
            return [("", {})]
        combos = sorted(self.runs[self.facets].drop_duplicates().to_dict("records"), key=self.sort_key)
        return [(", ".join(f"{k}={option_text(k, v)}" for k, v in c.items()), c) for c in combos]


def _log10_ratio(top: float, bottom: float) -> float:
    """log10(top / bottom), keeping what a zero or non-finite norm makes of it (-inf, inf or NaN)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(np.log10(np.float64(top) / np.float64(bottom)))


def _grad_numbers(grads: pd.DataFrame) -> dict[str, float]:
    """First/last recorded step and the log10 first-over-last layer weight-gradient ratio at each."""
    w = grads[grads["quantity"] == "weight_grad"]
    keys = ("first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last")
    out = dict.fromkeys(keys, math.nan)
    if w.empty:
        return out
    for when, step in (("first", w["step"].min()), ("last", w["step"].max())):
        at = w[w["step"] == step].sort_values("layer_index")
        out[f"{when}_recorded_step"] = int(step)
        out[f"log10_grad_ratio_{when}"] = _log10_ratio(at["norm"].iloc[0], at["norm"].iloc[-1])
    return out


def _updates_to(metrics: pd.DataFrame, target: float = TARGET_ACC) -> float:
    """Updates (step + 1) until the first evaluation with test accuracy >= target; NaN when never reached."""
    hit = metrics[metrics["test_acc"] >= target]
    return float(hit["step"].iloc[0] + 1) if len(hit) else math.nan


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read a sweep folder (``sweep.json`` and ``runs/``) into a :class:`Sweep`.

    Every grid point of ``sweep.json`` gets a row in ``runs``, and so does every finished
    run of the grids it ran before; a point without a run folder is ``missing``. A finished
    run whose folder is damaged (a file missing, cut short, or unlike its record) is logged
    and counted as ``failed``, its error saying why. Raises ``UsageError`` when ``path`` is
    not a sweep folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give a sweep folder made by `resgrad sweep` (it holds sweep.json).")
    spec = load_spec(path)
    rows, metrics, grads = [], [], []
    for config in sweep_runs(path, spec):  # the grid's points, then finished runs of earlier grids
        run_id = config.run_id()
        options = {name: getattr(config, name) for name in GRID_OPTIONS}
        run_dir = path / "runs" / run_id
        summary = read_summary(run_dir)
        status = summary.get("status") if summary else None
        row: dict[str, Any] = {"run_id": run_id, **options, "status": status if status in STATUSES else "missing"}
        if summary:
            row.update({k: summary.get(k) for k in _SUMMARY_KEYS})
        problem = check_run(run_dir, summary) if row["status"] in FINISHED else None
        if problem is None and row["status"] in FINISHED:
            try:
                m = pd.read_csv(run_dir / "metrics.csv")
                g = pd.read_parquet(run_dir / "grad_norms.parquet")
            except (OSError, ValueError) as exc:
                problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if problem is not None:  # reported like a failed run, by name, instead of failing the report
            log.warning("run %s is damaged (%s): reported as failed; rerun the sweep to run it again", run_id, problem)
            row.update({k: None for k in _SUMMARY_KEYS})
            row.update(status="failed", error=f"run folder damaged: {problem}")
        if row["status"] in FINISHED:
            row.update(_grad_numbers(g))
            row["updates_to_90pct_acc"] = _updates_to(m)
            metrics.append(m.assign(run_id=run_id, **options))
            # "norm" is also a grid option (the normalisation layer): the value column becomes grad_norm.
            grads.append(g.rename(columns={"norm": "grad_norm"}).assign(run_id=run_id, **options))
        rows.append(row)
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in _NUMERIC:
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype("Int64" if col in _COUNTS else "float64")
    return Sweep(path, spec, runs, _concat(metrics), _concat(grads))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate with run_id and the grid options as the leading columns."""
    if not frames:
        return pd.DataFrame(columns=["run_id", *GRID_OPTIONS])
    frame = pd.concat(frames, ignore_index=True)
    lead = ["run_id", *GRID_OPTIONS]
    return frame[lead + [c for c in frame.columns if c not in lead]]
