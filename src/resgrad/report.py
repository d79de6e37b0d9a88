"""Reports from a sweep folder: tables, ``report.md`` and a self-contained ``report.html``.

:func:`load_sweep` reads a sweep folder into pandas frames (for a notebook);
:func:`make_report` writes ``report.md``, ``report.html`` (figures embedded as
base64 PNG), ``figures/*.png`` (drawn by :mod:`resgrad.figures`) and ``tables/*.csv``.

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

import base64
import html
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from resgrad.config import facet_options
from resgrad.errors import UsageError
from resgrad.figures import render_figures
from resgrad.files import atomic_dir, prepare_output
from resgrad.grid import GRID_OPTIONS, SweepSpec, load_spec, sweep_points
from resgrad.markdown import markdown_table
from resgrad.rundir import DONE, SUMMARY_KEYS, check_run, read_summary
from resgrad.rundir import STATUSES as RUN_STATUSES  # complete, diverged, failed

log = logging.getLogger(__name__)

STATUSES = (*RUN_STATUSES, "missing")  # a grid point without a run folder is "missing"
FINISHED = DONE  # runs that trained and left metrics and gradient norms
# Grid options that get their own facet rows/columns when a sweep varies them (arch, depth and seed have fixed roles).
FACET_OPTIONS = facet_options()  # declared with the TrainConfig fields (resgrad.config)
TARGET_ACC = 0.9
MAX_EVALS_SHOWN = 15  # the report shows test accuracy per evaluation as a table up to this many evaluations per run
RUN_COLUMNS = [
    "run_id", *GRID_OPTIONS, "status",
    "final_test_acc", "final_test_loss", "final_train_loss", "steps", "diverged_at_step",
    "first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last",
    "updates_to_90pct_acc", "wall_seconds", "images_per_s", "params",
    "device_name", "torch_version", "resgrad_version", "error",
]
_SUMMARY_KEYS = tuple(k for k in SUMMARY_KEYS if k in RUN_COLUMNS and k not in ("run_id", "status"))
_NUMERIC = ["final_test_acc", "final_test_loss", "final_train_loss", "steps", "diverged_at_step",
            "first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last",
            "updates_to_90pct_acc", "wall_seconds", "images_per_s", "params"]
_COUNTS = ("steps", "diverged_at_step", "first_recorded_step", "last_recorded_step", "updates_to_90pct_acc", "params")


# ---------------------------------------------------------------- loading


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
        return [(", ".join(f"{k}={_option_text(k, v)}" for k, v in c.items()), c) for c in combos]


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
        raise UsageError(
            f"{path} is not a folder; give a sweep folder made by `resgrad sweep` (it holds sweep.json)."
        )
    spec = load_spec(path)
    rows, metrics, grads = [], [], []
    for config in sweep_points(path, spec):  # the grid's points, then finished runs of earlier grids
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


# ---------------------------------------------------------------- tables


def _mean_std(values: Sequence[float] | pd.Series) -> tuple[float, float]:
    """Mean and sample std that keep NaN and inf (pandas would skip NaN); NaN std for one value."""
    arr = np.asarray(values, dtype="float64")
    if arr.size == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(arr.mean())
        std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def _groups(sweep: Sweep, keys: list[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Groups of ``runs`` by ``keys`` in a readable order (see :meth:`Sweep.sort_key`)."""
    out = [(dict(zip(keys, key)), g) for key, g in sweep.runs.groupby(keys, sort=False)]
    return sorted(out, key=lambda kg: sweep.sort_key(kg[0]))


def summary_table(sweep: Sweep) -> pd.DataFrame:
    """Per (varied option ×) arch × depth: counts and mean/std over seeds (numbers stay numeric).

    Columns: the varied options, ``arch``, ``depth``, ``n_runs``, ``n_complete``, ``n_diverged``,
    ``n_failed``, ``n_missing``, ``<measure>_mean`` and ``<measure>_std`` for ``final_test_acc``,
    ``final_train_loss``, ``log10_grad_ratio_first``, ``log10_grad_ratio_last`` and
    ``updates_to_90pct_acc`` (over the runs that reached 90 %), and ``n_reached_90pct_acc``.

    ``log10_grad_ratio_first`` (step 0) is over complete and diverged runs; everything else over
    complete runs only: a diverged run's last record comes at another step and is often
    non-finite, so it would turn the cell NaN and mix training times.
    """
    keys = [*sweep.facets, "arch", "depth"]
    rows = []
    for key, g in _groups(sweep, keys):
        done = g[g["status"] == "complete"]
        finished = g[g["status"].isin(FINISHED)]
        row: dict[str, Any] = dict(key)
        row["n_runs"] = len(g)
        for status in STATUSES:
            row[f"n_{status}"] = int((g["status"] == status).sum())
        for col, sub in (
            ("final_test_acc", done), ("final_train_loss", done),
            ("log10_grad_ratio_first", finished), ("log10_grad_ratio_last", done),
        ):
            row[f"{col}_mean"], row[f"{col}_std"] = _mean_std(sub[col])
        reached = done["updates_to_90pct_acc"].dropna()  # NaN here means "not reached", counted below
        row["updates_to_90pct_acc_mean"], row["updates_to_90pct_acc_std"] = _mean_std(reached)
        row["n_reached_90pct_acc"] = len(reached)
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(sweep: Sweep) -> pd.DataFrame:
    """Plain vs residual per depth (× varied option): mean test accuracy and log10 first/last-layer gradient ratio.

    Columns: the varied options, ``depth``, then per arch ``<arch>_test_acc``,
    ``<arch>_log10_grad_ratio_first`` and ``<arch>_log10_grad_ratio_last`` (means over seeds).
    """
    table = summary_table(sweep)
    keys = [*sweep.facets, "depth"]
    out = table[keys].drop_duplicates().reset_index(drop=True)
    for measure, source in (
        ("test_acc", "final_test_acc_mean"),
        ("log10_grad_ratio_first", "log10_grad_ratio_first_mean"),
        ("log10_grad_ratio_last", "log10_grad_ratio_last_mean"),
    ):
        for arch in sweep.archs:
            part = table[table["arch"] == arch][keys + [source]].rename(columns={source: f"{arch}_{measure}"})
            out = out.merge(part, on=keys, how="left")
    order = sorted(range(len(out)), key=lambda i: sweep.sort_key(out.loc[i, keys].to_dict()))
    return out.loc[order].reset_index(drop=True)


def acc_by_eval_table(sweep: Sweep) -> pd.DataFrame:
    """Test accuracy at each evaluation, mean/std over the complete runs of each arch × depth (× varied option).

    Columns: ``arch``, ``depth``, the varied options, ``step`` (as in ``metrics.csv``: the
    evaluation follows update ``step + 1``), ``epoch``, ``test_acc_mean``, ``test_acc_std``, ``n_runs``.
    """
    keys = ["arch", "depth", *sweep.facets]
    columns = [*keys, "step", "epoch", "test_acc_mean", "test_acc_std", "n_runs"]
    complete = sweep.runs.loc[sweep.runs["status"] == "complete", "run_id"]
    m = sweep.metrics
    evals = m[m["run_id"].isin(complete) & m["test_acc"].notna()] if len(m) else m
    if evals.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for values, g in evals.groupby([*keys, "step", "epoch"], sort=False):
        row = dict(zip([*keys, "step", "epoch"], values))
        row["test_acc_mean"], row["test_acc_std"] = _mean_std(g["test_acc"])
        row["n_runs"] = len(g)
        rows.append(row)
    order = [*sweep.facets, "arch", "depth", "step"]  # read in blocks, like the other tables
    rows.sort(key=lambda r: sweep.sort_key({k: r[k] for k in order}))
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- formatting


def _num(x: float, digits: int) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _pm(mean: float, std: float, n: int, digits: int, scale: float = 1.0) -> str:
    """``mean ± std`` over ``n`` values; ``—`` when there are none; the mean alone for one."""
    if n == 0:
        return "—"
    if n == 1:
        return _num(mean * scale, digits)
    return f"{_num(mean * scale, digits)} ± {_num(std * scale, digits)}"


def _option_text(name: str, value: Any) -> str:
    return f"{value:g}" if name == "lr" else str(value)


def summary_display(table: pd.DataFrame, facets: list[str]) -> pd.DataFrame:
    """The summary table as strings for Markdown/HTML: ``mean ± std``, accuracy in %, "not reached"."""
    rows = []
    for _, r in table.iterrows():
        row = {f: _option_text(f, r[f]) for f in facets}
        row.update({"arch": r["arch"], "depth": str(r["depth"])})
        n_done = int(r["n_complete"])
        n_fin = n_done + int(r["n_diverged"])

        def pm(col: str, n: int, digits: int, scale: float = 1.0) -> str:
            return _pm(r[f"{col}_mean"], r[f"{col}_std"], n, digits, scale)

        row["test acc (%)"] = pm("final_test_acc", n_done, 2, 100.0)
        row["train loss"] = pm("final_train_loss", n_done, 4)
        row["log10 grad ratio, first step"] = pm("log10_grad_ratio_first", n_fin, 2)
        row["log10 grad ratio, last step"] = pm("log10_grad_ratio_last", n_done, 2)
        n_hit = int(r["n_reached_90pct_acc"])
        if n_done == 0:
            row["updates to 90 % acc"] = "—"
        elif n_hit == 0:
            row["updates to 90 % acc"] = "not reached"
        else:
            text = pm("updates_to_90pct_acc", n_hit, 0)
            row["updates to 90 % acc"] = text if n_hit == n_done else f"{text} ({n_hit} of {n_done} reached)"
        row["runs"] = str(int(r["n_runs"]))
        row["diverged / failed / missing"] = f"{int(r['n_diverged'])} / {int(r['n_failed'])} / {int(r['n_missing'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def headline_display(table: pd.DataFrame) -> pd.DataFrame:
    """The headline table as strings: accuracy in %, log10 ratios with two decimals, ``—`` for no complete run."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        values = table[col]
        if col.endswith("_test_acc"):
            # NaN accuracy only means "no complete run" (a complete run always has one)
            arch = col[: -len("_test_acc")]
            out[f"{arch} test acc (%)"] = ["—" if pd.isna(v) else _num(v * 100, 2) for v in values]
        elif "_log10_grad_ratio_" in col:
            arch, when = col.split("_log10_grad_ratio_")
            # the last-step ratio comes from complete runs only: none there -> "—", not a NaN norm
            no_run = table[f"{arch}_test_acc"].isna() if when == "last" else pd.Series(False, index=table.index)
            out[f"{arch} log10 grad ratio, {when} step"] = [
                "—" if none else _num(float(v), 2) for v, none in zip(values, no_run)
            ]
        else:
            out[col] = [_option_text(col, v) for v in values]
    return out.reset_index(drop=True)


def _eval_label(step: int, epoch: int, per_epoch: int | None) -> str:
    """A column heading for the evaluation after update ``step + 1``: ``epoch N`` at an epoch's end."""
    if per_epoch and (step + 1) == (epoch + 1) * per_epoch:
        return f"epoch {epoch + 1}"
    return f"{step + 1} updates"


def acc_by_eval_display(table: pd.DataFrame, facets: list[str], per_epoch: int | None = None) -> pd.DataFrame:
    """The test-accuracy table (from :func:`acc_by_eval_table`) wide: a row per arch × depth, a column per evaluation.

    Cells: test accuracy in %, ``mean ± std`` over the complete runs; ``—`` where none evaluated there.
    ``per_epoch``: updates per epoch; evaluations at an epoch's end are headed ``epoch N``.
    """
    keys = [*facets, "arch", "depth"]
    if table.empty:
        return pd.DataFrame(columns=keys)
    points = table[["step", "epoch"]].drop_duplicates().sort_values("step")
    labels = {int(s): _eval_label(int(s), int(e), per_epoch) for s, e in points.itertuples(index=False)}
    if not all(label.startswith("epoch") for label in labels.values()):  # one kind of heading, not a mix
        labels = {s: f"{s + 1} updates" for s in labels}
    rows = []
    for values, g in table.groupby(keys, sort=False):
        row = {k: _option_text(k, v) for k, v in zip(keys, values)}
        row["runs"] = str(int(g["n_runs"].max()))
        cells = {int(r.step): _pm(r.test_acc_mean, r.test_acc_std, int(r.n_runs), 2, 100.0) for r in g.itertuples()}
        row.update({label: cells.get(step, "—") for step, label in labels.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def headline_markdown(table: pd.DataFrame) -> str:
    """The headline table (from :func:`headline_table`) as Markdown, as ``resgrad report`` prints it."""
    return markdown_table(headline_display(table)).rstrip("\n")


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`make_report` wrote."""

    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    headline: pd.DataFrame = field(repr=False)


NOTES = [
    "**log10 grad ratio** = log10(‖∂L/∂W‖ of the first weighted layer / ‖∂L/∂W‖ of the last, the fc layer), "
    "at each run's first and at its last recorded step: −2 means the first layer's gradient is 100 times smaller "
    "than the last layer's. A zero or non-finite norm is kept: −inf (first-layer norm zero), inf, or NaN.",
    "**Means and spreads** are over seeds: mean ± sample standard deviation (a single run shows its value alone). "
    "Test accuracy, training loss (mean of the last 50 steps), updates to 90 % and the gradient ratio at the last "
    "recorded step come from complete runs only: a diverged run stops early, often on a non-finite record. "
    "The gradient ratio at the first recorded step (step 0, before any update) comes from every finished run, "
    "complete or diverged. Diverged runs are counted in their own column.",
    "**Updates to 90 % acc** = step + 1 of the first test evaluation with accuracy ≥ 90 %, so it is only as fine "
    "as the sweep's evaluation interval; runs that never got there are counted as not reached.",
    "Full numbers: `tables/by_arch_depth.csv` (one row per arch and depth, separate mean and std columns), "
    "`tables/headline.csv`, `tables/test_acc_by_eval.csv` (test accuracy at every evaluation) and "
    "`tables/runs.csv` (one row per run, with its status and error). "
    "In Python: `resgrad.report.load_sweep(path)` returns these frames and every metric and gradient norm.",
]


def _sweep_paragraphs(sweep: Sweep) -> list[str]:
    """Paragraphs describing the sweep: grid, fixed options, run counts, versions."""
    grid = sweep.spec.validate().grid
    varied = [f"{k} ∈ {{{', '.join(_option_text(k, v) for v in vals)}}}" for k, vals in grid.items() if len(vals) > 1]
    same = [f"{k}={_option_text(k, vals[0])}" for k, vals in grid.items() if len(vals) == 1]
    same += [f"{k}={v}" for k, v in sweep.spec.fixed.items() if k != "data_dir" and v is not None]
    counts = ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in STATUSES)
    fin = sweep.finished
    made = "; ".join(
        f"{name} {', '.join(sorted(map(str, fin[col].dropna().unique())))}"
        for name, col in (("resgrad", "resgrad_version"), ("torch", "torch_version"), ("on", "device_name"))
        if fin[col].notna().any()
    )
    out = [
        f"Sweep folder `{sweep.path}`: {len(sweep.runs)} runs ({counts}).",
        f"Varied: {'; '.join(varied) or 'nothing'}. The same for every run: {', '.join(same)}.",
    ]
    if made:
        out.append(f"Made with {made}.")
    return out


def _run_note(r: pd.Series) -> str:
    """Why a run has no numbers: where it diverged, or the error of a failed run."""
    if r["status"] == "diverged" and not pd.isna(r["diverged_at_step"]):
        return f"diverged at step {int(r['diverged_at_step'])}"
    return str(r["error"]) if r["status"] == "failed" else ""


def _runs_display(sweep: Sweep) -> pd.DataFrame:
    keys = [k for k in GRID_OPTIONS if sweep.runs[k].nunique() > 1] or ["arch"]
    rows = []
    for _, r in sweep.runs.iterrows():
        row = {"run_id": r["run_id"], **{k: _option_text(k, r[k]) for k in keys}, "status": r["status"]}
        row["test acc (%)"] = "" if pd.isna(r["final_test_acc"]) else _num(100 * r["final_test_acc"], 2)
        row["train loss"] = "" if pd.isna(r["final_train_loss"]) else _num(r["final_train_loss"], 4)
        finished = r["status"] in FINISHED
        row["log10 grad ratio, first"] = _num(r["log10_grad_ratio_first"], 2) if finished else ""
        row["log10 grad ratio, last"] = _num(r["log10_grad_ratio_last"], 2) if finished else ""
        hit = r["updates_to_90pct_acc"]
        row["updates to 90 %"] = "" if r["status"] != "complete" else ("not reached" if pd.isna(hit) else str(int(hit)))
        row["note"] = _run_note(r)
        rows.append(row)
    return pd.DataFrame(rows)


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0 2em}img{max-width:100%;height:auto}figcaption{font-size:.9em;color:#444;max-width:60em}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
"""


class _Page:
    """report.md and report.html side by side: each piece is added to both."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def paragraph(self, text: str) -> None:
        self.md.extend([text, ""])
        self.html.append(f"<p>{_inline_html(text)}</p>")

    def heading(self, level: int, text: str) -> None:
        self.md.extend([f"{'#' * level} {text}", ""])
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def table(self, frame: pd.DataFrame, csv: str) -> None:
        self.md.extend([markdown_table(frame), f"CSV: `tables/{csv}.csv`", ""])
        self.html.extend([_html_table(frame), f"<p>CSV: <code>tables/{csv}.csv</code></p>"])

    def figure(self, name: str, heading: str, png: bytes, caption: str) -> None:
        self.md.extend([f"![{heading}](figures/{name}.png)", "", f"*{caption}*", ""])
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f"<figure><img alt=\"{html.escape(heading)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{_inline_html(caption)}</figcaption></figure>")

    def bullets(self, items: list[str]) -> None:
        self.md.extend([*(f"- {n}" for n in items), ""])
        self.html.extend(["<ul>", *(f"<li>{_inline_html(n)}</li>" for n in items), "</ul>"])

    def markdown(self) -> str:
        return "\n".join(self.md)

    def page(self) -> str:
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(self.html) + "\n</body></html>\n")


def _check_out(out: Path) -> None:
    """Refuse a report folder that would replace something other than an earlier report (see prepare_output)."""
    prepare_output(out, "report")


def _test_acc_section(page: _Page, sweep: Sweep, table: pd.DataFrame) -> None:
    evals = table.groupby(["arch", "depth", *sweep.facets])["step"].nunique().max() if len(table) else 0
    page.heading(2, "Test accuracy during training")
    if table.empty:
        page.paragraph("No complete run: no test accuracy to show. CSV: `tables/test_acc_by_eval.csv`")
    elif evals > MAX_EVALS_SHOWN:
        page.paragraph(f"{evals} evaluations per run, too many for a table here: see figure 5 and "
                       "`tables/test_acc_by_eval.csv` (mean, std and count of complete runs at every evaluation).")
    else:
        page.paragraph("Test accuracy (%) of the complete runs at each evaluation, mean ± std over seeds; "
                       "columns: the evaluation after that many updates (or at the end of that epoch).")
        page.table(acc_by_eval_display(table, sweep.facets, sweep.steps_per_epoch), "test_acc_by_eval")


def _lesion_section(page: _Page, sweep: Sweep, tables: dict[str, pd.DataFrame],
                    first: int) -> list[tuple[str, str, bytes, str]]:
    """The block-lesion section when ``SWEEP_DIR/lesion/lesion.csv`` exists (``resgrad lesion``); its figures."""
    from resgrad.lesion import lesion_display, lesion_figures, lesion_table, read_lesion

    path = sweep.path / "lesion" / "lesion.csv"
    if not path.is_file():
        return []
    page.heading(2, "Block lesions")
    try:
        frame = read_lesion(path)
    except (OSError, ValueError, KeyError) as exc:
        page.paragraph(f"`lesion/lesion.csv` cannot be read ({exc}); rerun `resgrad lesion {sweep.path}`.")
        return []
    table = lesion_table(frame)
    tables["lesion"] = table
    page.paragraph(f"Test accuracy (%) of {frame['run_id'].nunique()} trained runs with blocks deleted at test time, "
                   "each replaced by its shortcut (Veit et al. 2016), from `lesion/lesion.csv` (`resgrad lesion`); "
                   "means over seeds. One block deleted: over the blocks whose shortcut is the identity (mean, and the "
                   "worst block), and over the downsampling blocks; k deleted: random sets of k such blocks.")
    page.table(lesion_display(table), "lesion")
    figures = [(name, heading, png, caption) for name, (heading, png, caption) in lesion_figures(frame).items()]
    for i, (name, heading, png, caption) in enumerate(figures, first):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    return figures


def _gain_section(page: _Page, sweep: Sweep, tables: dict[str, pd.DataFrame],
                  first: int) -> list[tuple[str, str, bytes, str]]:
    """The backward gain per block next to the activations' mean σ′ (:mod:`resgrad.gain`); its figure."""
    from resgrad.figures import GAIN_FIGURE
    from resgrad.gain import gain_display, sweep_gain_table, table_keys

    table = sweep_gain_table(sweep)
    tables["block_gain"] = table
    page.heading(2, "Backward gain per block")
    page.paragraph("The vanishing-gradient argument: going back through a layer multiplies the backward signal by "
                   "about σ′(z)·w, and σ′ ≤ 1/4 for a sigmoid (≤ 1 for tanh; 0 or 1 for ReLU). Measured here: the "
                   "**gain** of block l, ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ from the recorded backward signal (below 1: the "
                   "signal shrinks through the block; block 0's input is not recorded), and the mean σ′ over the "
                   "input elements of the block's activation modules (`act_deriv`). Table: medians over every "
                   "block l ≥ 1 of every run, at each run's first recorded step (complete and diverged runs) and "
                   "at its last (complete runs only).")
    figures = render_figures(sweep, [GAIN_FIGURE])
    for i, (name, heading, png, caption) in enumerate(figures, first):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    page.table(gain_display(table, table_keys(sweep)), "block_gain")
    return figures


def make_report(sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Report:
    """Write the report of a sweep folder.

    The report folder is written whole: it is filled beside its place and swapped in at the
    end, so a crash leaves the earlier report as it was. An earlier report in ``out_dir``
    is replaced; any other non-empty folder is refused.

    Args:
        sweep_dir: a sweep folder (``sweep.json``, ``runs/``).
        out_dir: where to write (default ``SWEEP_DIR/report``).

    Returns:
        A :class:`Report` with the paths written and the headline table.

    Raises:
        UsageError: ``sweep_dir`` is not a sweep folder or holds no finished run, or ``out_dir`` is
            a file or a folder that is not an earlier report (nothing is written).
    """
    sweep = load_sweep(sweep_dir)
    if sweep.finished.empty:
        counts = ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in STATUSES if s not in FINISHED)
        raise UsageError(
            f"sweep folder {sweep_dir} holds no finished run ({counts}); run `resgrad sweep` on it first."
        )
    out = Path(out_dir) if out_dir is not None else sweep.path / "report"
    _check_out(out)

    figures = render_figures(sweep)
    headline = headline_table(sweep)
    by_depth = summary_table(sweep)
    test_acc = acc_by_eval_table(sweep)
    tables = {"by_arch_depth": by_depth, "headline": headline, "test_acc_by_eval": test_acc, "runs": sweep.runs}

    page = _Page(f"resgrad report: {sweep.path.resolve().name}")
    for text in _sweep_paragraphs(sweep):
        page.paragraph(text)
    page.heading(2, "Headline: plain vs residual")
    page.paragraph("Mean over seeds of the final test accuracy and of log10(first-layer / last-layer weight-gradient "
                   "norm) at the first and the last recorded step.")
    page.table(headline_display(headline), "headline")
    page.heading(2, "Figures")
    for i, (name, heading, png, caption) in enumerate(figures, 1):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png, caption)
    page.heading(2, "Per arch and depth")
    page.table(summary_display(by_depth, sweep.facets), "by_arch_depth")
    figures = figures + _gain_section(page, sweep, tables, len(figures) + 1)
    _test_acc_section(page, sweep, test_acc)
    figures = figures + _lesion_section(page, sweep, tables, len(figures) + 1)
    page.heading(2, "Runs")
    page.table(_runs_display(sweep), "runs")
    page.heading(2, "How to read the tables")
    page.bullets(NOTES)

    with atomic_dir(out) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        for name, _, png, _ in figures:
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        for name, frame in tables.items():
            _write_table(tmp / "tables" / f"{name}.csv", frame)
        (tmp / "report.md").write_text(page.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(page.page(), encoding="utf-8")
    log.info("report written to %s", out)
    return Report(
        out, out / "report.md", out / "report.html",
        [out / "figures" / f"{name}.png" for name, _, _, _ in figures],
        [out / "tables" / f"{name}.csv" for name in tables],
        headline,
    )


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    """CSV with NaN written as ``NaN`` (visible, and read back as NaN by pandas), inf as ``inf``."""
    frame.to_csv(path, index=False, na_rep="NaN")
