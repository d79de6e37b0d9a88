"""Theory and measurement: each block's measured backward gain beside the gain :mod:`resgrad.theory` predicts.

For every finished run of a sweep, :func:`sweep_theory` rebuilds the model from the run's config
(its structure, and its initial weights: ``resgrad.train.initial_model``), reads the final weights
(``model.pt``), and predicts the gain of every block at every recorded step from the recorded
``weight_norm`` and ``act_deriv_sq``. The measured gain is the report's (:func:`resgrad.report.gain.block_gains`).

The per-tap energies the border factor needs are known where the weights are: at step 0 and
after the last update (``model.pt`` of a complete run); in between they are interpolated linearly
(:class:`resgrad.theory.TapShape`), and a run without usable final weights keeps its step-0 shape.
A block is compared only where its measured input signal is well inside float32's range: its
root-mean-square element at least :data:`UNDERFLOW_MARGIN` × the smallest normal float (deep plain
sigmoid nets send signals of 1e-45 and less, which float32 rounds or flushes to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from resgrad.errors import UsageError
from resgrad.geometry import net_geometry
from resgrad.report.gain import WHEN, block_gains, table_keys
from resgrad.report.sweepdata import Sweep
from resgrad.sweeps.folder import sweep_runs
from resgrad.theory import not_predicted, predict, tap_shapes
from resgrad.train import initial_model

UNDERFLOW_MARGIN = 2.0**10
AGREEMENT = (0.85, 1.15)  # the band the issue asks the first-step medians to lie in
STATS = ("median", "q25", "q75", "min", "max")
TABLE_STATS = [
    "n_runs",
    "n_blocks",
    "n_compared",
    "n_underflow",
    "n_approx",
    "median_measured_gain",
    "median_predicted_gain",
    *[f"{s}_ratio" for s in STATS],
    "median_ratio_exact",
]


@dataclass
class Theory:
    """Predictions of a sweep's runs.

    Attributes:
        blocks: per run, recorded step and block l ≥ 1: the run's keys, ``block_index``, ``block``,
            ``shortcut``, ``approx``, ``measured_gain``, ``predicted_gain``, ``ratio`` (measured/predicted),
            ``signal_out`` (the measured ‖∂L/∂hₗ‖), ``signal_in`` (‖∂L/∂hₗ₋₁‖) and ``compared``.
        left_out: run_id → why its gains are not predicted.
        taps: per run and weighted layer with final weights: ``border_start``, ``border_end`` and
            ``border_equal`` (equal tap energies, at step 0), and ``norm_end_over_last_recorded``
            (‖W‖ of model.pt over the ‖W‖ recorded at the last recorded step, one update earlier).
    """

    blocks: pd.DataFrame
    left_out: dict[str, str] = field(default_factory=dict)
    taps: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def made(self) -> bool:
        return not self.blocks.empty


def _final_state(run_dir: Any, status: str) -> dict[str, torch.Tensor] | None:
    """The weights after a complete run's last update, if saved and finite."""
    path = run_dir / "model.pt"
    if status != "complete" or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    finite = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    return state if finite else None


def _run_blocks(sweep: Sweep, config: Any, run: pd.Series, stats: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's compared blocks and its tap-shape numbers; raises UsageError when it is not predicted."""
    with torch.random.fork_rng(devices=[]):  # initial_model seeds torch's generator: leave the caller's alone
        model = initial_model(config)
    geometry = net_geometry(model)
    why = not_predicted(geometry)
    if why:
        raise UsageError(why)
    states = {0: model.state_dict()}
    final = _final_state(sweep.path / "runs" / run["run_id"], run["status"])
    if final is not None:
        states[int(run["steps"])] = final  # the weights after update `steps - 1`, i.e. those step `steps` would use
    shapes = tap_shapes(geometry, states)
    _, predicted = predict(geometry, stats, shapes, value="grad_norm")

    measured = block_gains(stats, ["run_id"]).rename(columns={"gain": "measured_gain"})
    signal = stats[stats["quantity"] == "activation_grad"].sort_values(["step", "layer_index"])
    signal = signal.assign(signal_in=signal.groupby("step")["grad_norm"].shift(1))
    signal = signal.rename(columns={"layer": "block", "grad_norm": "signal_out"})[
        ["step", "block", "signal_out", "signal_in"]
    ]
    out = measured.merge(signal, on=["step", "block"]).merge(
        predicted.drop(columns="block_index"), on=["step", "block"], how="left"
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["measured_gain"].to_numpy(float) / out["predicted_gain"].to_numpy(float)
    elements = {b.name: b.input_elements for b in geometry.blocks}
    inputs = out["block"].map(elements)  # C·H·W of the block's input, per image
    tiny = torch.finfo(getattr(torch, config.dtype)).tiny
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = out["signal_in"].to_numpy(float) / np.sqrt(config.batch_size * inputs.to_numpy(float))
        out["underflow"] = ~(rms >= UNDERFLOW_MARGIN * tiny)
        good = np.isfinite(out["ratio"].to_numpy(float)) & (out["ratio"].to_numpy(float) > 0)
    out["compared"] = good & ~out["underflow"].to_numpy()

    taps = []
    if len(states) == 2:
        last = stats[stats["quantity"] == "weight_norm"]
        last = last[last["step"] == last["step"].max()].set_index("layer")["grad_norm"]
        for name, g in geometry.layers.items():
            w_end = final[f"{name}.weight"].double()
            taps.append(
                dict(
                    run_id=run["run_id"],
                    layer=name,
                    border_start=shapes[name].factors[0],
                    border_end=shapes[name].factors[-1],
                    border_equal=g.border(),
                    norm_end_over_last_recorded=float(w_end.norm()) / float(last.get(name, math.nan)),
                )
            )
    return out, pd.DataFrame(taps)


def sweep_theory(sweep: Sweep) -> Theory:
    """Measured and predicted gains of every block l ≥ 1 of every finished run of ``sweep`` that can be predicted."""
    configs = {c.run_id(): c for c in sweep_runs(sweep.path, sweep.spec)}
    keys = list(dict.fromkeys(["run_id", "seed", *table_keys(sweep)]))
    parts, taps, left_out = [], [], {}
    grads = sweep.grad_norms
    by_run = grads.groupby("run_id", sort=False).indices if len(grads) else {}
    for _, run in sweep.finished.iterrows():
        rows = by_run.get(run["run_id"])
        stats = grads.iloc[rows] if rows is not None else grads.iloc[:0]
        missing = [q for q in ("weight_norm", "act_deriv_sq") if not (stats["quantity"] == q).any()]
        if missing:
            left_out[run["run_id"]] = f"recorded before resgrad recorded {' and '.join(missing)}"
            continue
        try:
            blocks, tap = _run_blocks(sweep, configs[run["run_id"]], run, stats)
        except UsageError as exc:
            left_out[run["run_id"]] = str(exc)
            continue
        parts.append(blocks.assign(**{k: run[k] for k in keys if k != "run_id"}))
        taps.append(tap)
    columns = [*keys, "step", "block_index", "block", "shortcut", "approx"]
    if not parts:
        return Theory(pd.DataFrame(columns=[*columns, "measured_gain", "predicted_gain", "ratio"]), left_out)
    blocks = pd.concat(parts, ignore_index=True)
    rest = [c for c in blocks.columns if c not in columns]
    return Theory(blocks[columns + rest], left_out, pd.concat(taps, ignore_index=True) if taps else pd.DataFrame())


# ---------------------------------------------------------------- the table


def at_first_and_last(theory: Theory, sweep: Sweep) -> pd.DataFrame:
    """The block rows at each run's first recorded step (complete and diverged runs) and at its last (complete runs)."""
    b = theory.blocks
    if b.empty:
        return b.assign(when=pd.Series(dtype=object))
    steps = b.groupby("run_id")["step"]
    complete = set(sweep.runs.loc[sweep.runs["status"] == "complete", "run_id"])
    return pd.concat(
        [
            b[b["step"] == steps.transform("min")].assign(when=WHEN[0]),
            b[(b["step"] == steps.transform("max")) & b["run_id"].isin(complete)].assign(when=WHEN[1]),
        ],
        ignore_index=True,
    )


def _ratio_stats(ratios: np.ndarray) -> dict[str, float]:
    if not ratios.size:
        return {f"{s}_ratio": math.nan for s in STATS}
    q = np.quantile(ratios, [0.5, 0.25, 0.75, 0.0, 1.0])
    return {f"{s}_ratio": float(v) for s, v in zip(STATS, q)}


def theory_table(theory: Theory, sweep: Sweep) -> pd.DataFrame:
    """``gain_vs_theory``: per (other varied option ×) activation × arch × depth and when (first, last recorded step).

    Over every block l ≥ 1 of every predicted run of the group at that step: ``step`` (the earliest of
    the runs' steps there), counts (``n_blocks``; ``n_compared``; ``n_underflow``, not compared because
    the signal left float32's range; ``n_approx``, compared option-A blocks with a change of shape), the
    medians of the measured and the predicted gain, and the median, quartiles, min and max of
    measured/predicted over the compared blocks, and its median over the compared blocks that are
    not ``approx`` (``median_ratio_exact``, NaN when there is none). Ratios are fractions (1 = agreement).
    """
    keys = table_keys(sweep)
    columns = [*keys, "when", "step", *TABLE_STATS]
    snap = at_first_and_last(theory, sweep)
    if snap.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for values, group in snap.groupby([*keys, "when"], sort=False):
        ok = group[group["compared"]]
        exact = ok.loc[~ok["approx"].astype(bool), "ratio"].to_numpy(float)
        rows.append(
            {
                **dict(zip([*keys, "when"], values)),
                "step": int(group["step"].min()),
                "n_runs": group["run_id"].nunique(),
                "n_blocks": len(group),
                "n_compared": len(ok),
                "n_underflow": int(group["underflow"].sum()),
                "n_approx": int(ok["approx"].astype(bool).sum()),
                "median_measured_gain": float(np.median(ok["measured_gain"])) if len(ok) else math.nan,
                "median_predicted_gain": float(np.median(ok["predicted_gain"])) if len(ok) else math.nan,
                **_ratio_stats(ok["ratio"].to_numpy(float)),
                "median_ratio_exact": float(np.median(exact)) if exact.size else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    order = sorted(
        range(len(table)), key=lambda i: (sweep.sort_key(table.loc[i, keys].to_dict()), table.loc[i, "when"] != WHEN[0])
    )
    return table.loc[order].reset_index(drop=True)


def ratio_over_steps(theory: Theory) -> pd.DataFrame:
    """Per run and recorded step, the median measured/predicted over its compared blocks (``median_ratio``)."""
    b = theory.blocks
    keys = [c for c in b.columns[: list(b.columns).index("step")]]
    ok = b[b["compared"].astype(bool)] if "compared" in b else b.iloc[:0]
    return ok.groupby([*keys, "step"], sort=False)["ratio"].median().rename("median_ratio").reset_index()


def tap_table(theory: Theory, sweep: Sweep) -> pd.DataFrame:
    """``theory_tap_shape``: how much the border factors' tap shape moved, per (other option ×) activation × arch × depth.

    Over the weighted layers of the runs with final weights: ``max_border_change`` and
    ``median_border_change`` = |b(end)/b(0) − 1| (the interpolation between the two is exact at
    both ends); ``max_equal_taps_error`` = |b(equal tap energies)/b(0) − 1| (what assuming equal
    taps would cost at step 0); ``max_norm_offset`` = |‖W‖ of model.pt / ‖W‖ recorded at the last
    recorded step − 1| (the final weights are one update later). Fractions.
    """
    keys = table_keys(sweep)
    columns = [
        *keys,
        "n_runs",
        "n_layers",
        "max_border_change",
        "median_border_change",
        "max_equal_taps_error",
        "max_norm_offset",
    ]
    t = theory.taps
    if t.empty:
        return pd.DataFrame(columns=columns)
    t = t.merge(sweep.runs[["run_id", *keys]], on="run_id")
    t = t.assign(
        change=(t["border_end"] / t["border_start"] - 1).abs(),
        equal=(t["border_equal"] / t["border_start"] - 1).abs(),
        offset=(t["norm_end_over_last_recorded"] - 1).abs(),
    )
    table = (
        t.groupby(keys, sort=False)
        .agg(
            n_runs=("run_id", "nunique"),
            n_layers=("layer", "size"),
            max_border_change=("change", "max"),
            median_border_change=("change", "median"),
            max_equal_taps_error=("equal", "max"),
            max_norm_offset=("offset", "max"),
        )
        .reset_index()
    )
    order = sorted(range(len(table)), key=lambda i: sweep.sort_key(table.loc[i, keys].to_dict()))
    return table.loc[order].reset_index(drop=True)[columns]
