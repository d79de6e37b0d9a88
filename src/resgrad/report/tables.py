"""The report's tables over seeds, from a :class:`resgrad.report.sweepdata.Sweep`, and their display forms.

``*_table`` functions return numeric frames (written as ``tables/*.csv``); ``*_display``
functions turn them into strings for Markdown and HTML (``mean ± std``, accuracy in %).
Statistics keep NaN and inf (see :mod:`resgrad.report.sweepdata` for the conventions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from resgrad.report.markdown import markdown_table
from resgrad.report.sweepdata import FINISHED, STATUSES, Sweep, option_text
from resgrad.sweeps.grid import GRID_OPTIONS

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
            ("final_test_acc", done),
            ("final_train_loss", done),
            ("log10_grad_ratio_first", finished),
            ("log10_grad_ratio_last", done),
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


def summary_display(table: pd.DataFrame, facets: list[str]) -> pd.DataFrame:
    """The summary table as strings for Markdown/HTML: ``mean ± std``, accuracy in %, "not reached"."""
    rows = []
    for _, r in table.iterrows():
        row = {f: option_text(f, r[f]) for f in facets}
        row.update({"arch": r["arch"], "depth": str(r["depth"])})
        n_done = int(r["n_complete"])
        n_fin = n_done + int(r["n_diverged"])

        def pm(col: str, n: int, digits: int, scale: float = 1.0) -> str:
            return _pm(r[f"{col}_mean"], r[f"{col}_std"], n, digits, scale)  # noqa: B023  (used within this iteration)

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
            out[col] = [option_text(col, v) for v in values]
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
        row = {k: option_text(k, v) for k, v in zip(keys, values)}
        row["runs"] = str(int(g["n_runs"].max()))
        cells = {int(r.step): _pm(r.test_acc_mean, r.test_acc_std, int(r.n_runs), 2, 100.0) for r in g.itertuples()}
        row.update({label: cells.get(step, "—") for step, label in labels.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def headline_markdown(table: pd.DataFrame) -> str:
    """The headline table (from :func:`headline_table`) as Markdown, as ``resgrad report`` prints it."""
    return markdown_table(headline_display(table)).rstrip("\n")


def _run_note(r: pd.Series) -> str:
    """Why a run has no numbers: where it diverged, or the error of a failed run."""
    if r["status"] == "diverged" and not pd.isna(r["diverged_at_step"]):
        return f"diverged at step {int(r['diverged_at_step'])}"
    return str(r["error"]) if r["status"] == "failed" else ""


def runs_display(sweep: Sweep) -> pd.DataFrame:
    """One row per run as strings: the varied options, status, numbers, and why a run has none."""
    keys = [k for k in GRID_OPTIONS if sweep.runs[k].nunique() > 1] or ["arch"]
    rows = []
    for _, r in sweep.runs.iterrows():
        row = {"run_id": r["run_id"], **{k: option_text(k, r[k]) for k in keys}, "status": r["status"]}
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
