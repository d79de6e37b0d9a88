"""The backward gain per block, next to the mean activation derivative σ′ of its activations.

The vanishing-gradient argument says that going back through a layer multiplies the
signal by about σ′(z)·w, and that σ′ ≤ 1/4 for a sigmoid. With the recorded backward
signal ``activation_grad`` ‖∂L/∂hₗ‖ at the output hₗ of block l, the gain of block l is

    gainₗ = ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖        (l ≥ 1; block 0's input is not recorded)

— below 1, the signal shrinks on its way back through the block — and ``act_deriv``
gives the mean σ′ of the block's activation modules (those named ``<block>.…``).
Zero, infinite and NaN norms give what IEEE division makes of them (0/0 is NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

GAIN_COLUMNS = ["step", "block_index", "block", "gain", "act_deriv"]
WHEN = ("first", "last")


def block_gains(grads: pd.DataFrame, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Gain and mean act_deriv per run (``keys``), recorded step and block l ≥ 1.

    Args:
        grads: tidy gradient norms with ``keys``, ``step``, ``layer_index``, ``layer``, ``quantity``
            and the value in ``grad_norm`` (as :attr:`resgrad.report.sweepdata.Sweep.grad_norms` has them).
        keys: the columns that identify a run and are carried into the result.

    Returns:
        Columns ``keys``, ``step``, ``block_index`` (l), ``block`` (its name), ``gain`` and
        ``act_deriv`` (mean over the block's activation modules; NaN where none was recorded).
    """
    keys = list(keys)
    columns = [*keys, *GAIN_COLUMNS]
    if grads.empty:
        return pd.DataFrame(columns=columns)
    a = grads[grads["quantity"] == "activation_grad"].sort_values([*keys, "step", "layer_index"])
    if a.empty:
        return pd.DataFrame(columns=columns)
    before = a.groupby([*keys, "step"], sort=False)["grad_norm"].shift(1)  # ‖∂L/∂h_{l-1}‖
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = before.to_numpy(dtype="float64") / a["grad_norm"].to_numpy(dtype="float64")
    out = a[[*keys, "step", "layer_index", "layer"]].rename(columns={"layer_index": "block_index", "layer": "block"})
    out = out.assign(gain=gain)[a["layer_index"].to_numpy() > 0]
    out["act_deriv"] = _block_act_deriv(grads, keys, out)
    return out[columns].reset_index(drop=True)


def _block_act_deriv(grads: pd.DataFrame, keys: list[str], gains: pd.DataFrame) -> np.ndarray:
    """Mean act_deriv over the activation modules inside each block (named ``<block>.…``) of each row of ``gains``."""
    d = grads[grads["quantity"] == "act_deriv"]
    if d.empty or gains.empty:
        return np.full(len(gains), math.nan)
    blocks = set(gains["block"])
    owner = {name: _owner(name, blocks) for name in set(d["layer"])}
    d = d.assign(block=d["layer"].map(owner)).dropna(subset=["block"])
    group = [*keys, "step", "block"]
    means = d.groupby(group, sort=False)["grad_norm"].mean()
    # Keep NaN: a module not measured at that step makes the block's mean NaN (pandas would skip it).
    unmeasured = d.assign(nan=d["grad_norm"].isna()).groupby(group, sort=False)["nan"].any()
    means = means.where(~unmeasured)
    index = pd.MultiIndex.from_frame(gains[[*keys, "step", "block"]])
    return means.reindex(index).to_numpy(dtype="float64")


def _owner(name: str, blocks: set[str]) -> str | None:
    """The longest block name that ``name`` lies inside, if any."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in blocks:
            return prefix
    return None


def _median(values: pd.Series) -> float:
    """Median that keeps NaN (a NaN gain is shown, not dropped) and handles inf."""
    arr = values.to_numpy(dtype="float64")
    return float(np.median(arr)) if arr.size else math.nan


def gain_table(gains: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Median gain per block and median mean σ′ per ``keys`` (e.g. activation × arch × depth).

    At each run's first recorded step (runs complete or diverged) and at its last recorded step
    (complete runs only, as everywhere in the report). Medians are over every block l ≥ 1 of
    every run of the group.

    Args:
        gains: from :func:`block_gains` with ``run_id`` among its keys.
        runs: one row per run: ``run_id``, ``status`` and ``keys``.
        keys: the grouping columns, in the order of the table.

    Returns:
        Columns ``keys``, ``n_runs`` (finished runs), ``n_complete``, then per ``when`` in
        (first, last): ``median_block_gain_<when>``, ``median_act_deriv_<when>``, ``n_blocks_<when>``.
    """
    keys = list(keys)
    finished = runs[runs["status"].isin(("complete", "diverged"))]
    complete = set(runs.loc[runs["status"] == "complete", "run_id"])
    steps = gains.groupby("run_id")["step"]
    at = {
        "first": gains[gains["step"] == steps.transform("min")],
        "last": gains[(gains["step"] == steps.transform("max")) & gains["run_id"].isin(complete)],
    }
    rows: list[dict[str, Any]] = []
    for values, group in finished.groupby(keys, sort=False):
        key = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        ids = set(group["run_id"])
        row: dict[str, Any] = {**key, "n_runs": len(ids), "n_complete": len(ids & complete)}
        for when in WHEN:
            part = at[when][at[when]["run_id"].isin(ids)]
            row[f"median_block_gain_{when}"] = _median(part["gain"])
            row[f"median_act_deriv_{when}"] = _median(part["act_deriv"])
            row[f"n_blocks_{when}"] = len(part)
        rows.append(row)
    columns = [
        *keys,
        "n_runs",
        "n_complete",
        *[f"{c}_{w}" for w in WHEN for c in ("median_block_gain", "median_act_deriv", "n_blocks")],
    ]
    return pd.DataFrame(rows, columns=columns)


def _g(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def gain_display(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """:func:`gain_table` as strings: three significant digits, ``—`` where no run gave a value."""
    rows = []
    for _, r in table.iterrows():
        row = {k: (f"{r[k]:g}" if k == "lr" else str(r[k])) for k in keys}
        row["runs"] = str(int(r["n_runs"]))
        for when, label in (("first", "first step"), ("last", "last step")):
            none = int(r[f"n_blocks_{when}"]) == 0
            row[f"median gain per block, {label}"] = "—" if none else _g(r[f"median_block_gain_{when}"])
            row[f"median σ′, {label}"] = "—" if none else _g(r[f"median_act_deriv_{when}"])
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- from a sweep (resgrad.report.sweepdata.Sweep)


def _other_facets(sweep: Any) -> list[str]:
    """The options the sweep varies besides arch, depth, seed and activation."""
    return [f for f in sweep.facets if f != "activation"]


def table_keys(sweep: Any) -> list[str]:
    """The rows of the gain table: the other varied options, then activation × arch × depth."""
    return [*_other_facets(sweep), "activation", "arch", "depth"]


def sweep_other_combos(sweep: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(label, {option: value})`` per combination of the other varied options; one unlabelled entry if none."""
    others = _other_facets(sweep)
    if not others:
        return [("", {})]
    combos = sorted(sweep.runs[others].drop_duplicates().to_dict("records"), key=sweep.sort_key)
    return [(", ".join(f"{k}={v:g}" if k == "lr" else f"{k}={v}" for k, v in c.items()), c) for c in combos]


def sweep_gains(sweep: Any) -> pd.DataFrame:
    """:func:`block_gains` of every finished run of a :class:`resgrad.report.sweepdata.Sweep`, with its grid options."""
    keys = list(dict.fromkeys(["run_id", "arch", "depth", "seed", *table_keys(sweep)]))
    return block_gains(sweep.grad_norms, keys)


def sweep_gain_table(sweep: Any) -> pd.DataFrame:
    """:func:`gain_table` of a sweep, per (other varied option ×) activation × arch × depth, in the sweep's order."""
    keys = table_keys(sweep)
    table = gain_table(sweep_gains(sweep), sweep.runs, keys)
    order = sorted(range(len(table)), key=lambda i: sweep.sort_key(table.loc[i, keys].to_dict()))
    return table.loc[order].reset_index(drop=True)
