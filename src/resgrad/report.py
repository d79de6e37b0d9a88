"""Reports from a sweep folder: tables, seaborn figures, ``report.md`` and a self-contained ``report.html``.

:func:`load_sweep` reads a sweep folder into pandas frames (for a notebook);
:func:`make_report` writes ``report.md``, ``report.html`` (figures embedded as
base64 PNG), ``figures/*.png`` and ``tables/*.csv``.

Conventions used throughout:

- statistics over seeds are plain means and sample standard deviations that
  keep NaN and inf (a zero or non-finite gradient norm shows up as ``-inf``,
  ``inf`` or ``NaN``, never dropped);
- accuracy, loss and steps-to-90 % come from complete runs; gradient-norm
  statistics from every finished run (complete or diverged), each at its own
  first and last recorded step;
- figures draw lines on a log axis and mark every norm that axis cannot show
  (zero, inf, NaN) at its edge, counted in the caption.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from resgrad.errors import UsageError
from resgrad.files import atomic_write, write_bytes, write_text
from resgrad.markdown import markdown_table
from resgrad.sweep import GRID_OPTIONS, SweepSpec, load_spec

log = logging.getLogger(__name__)

STATUSES = ("complete", "diverged", "failed", "missing")
FINISHED = ("complete", "diverged")  # runs that trained and left metrics and gradient norms
# Grid options that get their own facet rows/columns when a sweep varies them (arch, depth and seed have fixed roles).
FACET_OPTIONS = ("norm", "activation", "width", "init", "lr")
TARGET_ACC = 0.9
LOSS_CEILING = 10.0  # top of the training-loss axis when some loss goes above it (chance level is ln 10 = 2.3)
RUN_COLUMNS = [
    "run_id", *GRID_OPTIONS, "status",
    "final_test_acc", "final_test_loss", "final_train_loss", "steps", "diverged_at_step",
    "first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last",
    "updates_to_90pct_acc", "wall_seconds", "images_per_s", "params",
    "device_name", "torch_version", "resgrad_version", "error",
]
_SUMMARY_KEYS = ("final_test_acc", "final_test_loss", "final_train_loss", "steps", "diverged_at_step",
                 "wall_seconds", "images_per_s", "params", "device_name", "torch_version", "resgrad_version", "error")
_NUMERIC = ["final_test_acc", "final_test_loss", "final_train_loss", "steps", "diverged_at_step",
            "first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last",
            "updates_to_90pct_acc", "wall_seconds", "images_per_s", "params"]
_COUNTS = ("steps", "diverged_at_step", "first_recorded_step", "last_recorded_step", "updates_to_90pct_acc", "params")
ARCH_COLORS = {"plain": "#c0392b", "residual": "#2471a3", "seed-plain": "#e67e22", "seed-residual": "#17a589"}


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _log10_ratio(top: float, bottom: float) -> float:
    """log10(top / bottom), keeping what a zero or non-finite norm makes of it (-inf, inf or NaN)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(np.log10(np.float64(top) / np.float64(bottom)))


def _grad_numbers(grads: pd.DataFrame) -> dict[str, float]:
    """First/last recorded step and the log10 first-over-last layer weight-gradient ratio at each."""
    w = grads[grads["quantity"] == "weight_grad"]
    out = dict.fromkeys(("first_recorded_step", "last_recorded_step", "log10_grad_ratio_first", "log10_grad_ratio_last"), math.nan)
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

    Every grid point of ``sweep.json`` gets a row in ``runs``; a point without a run
    folder is ``missing``. Raises ``UsageError`` when ``path`` is not a sweep folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give a sweep folder made by `resgrad sweep` (it holds sweep.json).")
    spec = load_spec(path)
    rows, metrics, grads = [], [], []
    for config in spec.configs():
        run_id = config.run_id()
        options = {name: getattr(config, name) for name in GRID_OPTIONS}
        run_dir = path / "runs" / run_id
        summary = _read_json(run_dir / "summary.json")
        status = summary.get("status") if summary else None
        row: dict[str, Any] = {"run_id": run_id, **options, "status": status if status in STATUSES else "missing"}
        if summary:
            row.update({k: summary.get(k) for k in _SUMMARY_KEYS})
        if row["status"] in FINISHED:
            try:
                m = pd.read_csv(run_dir / "metrics.csv")
                g = pd.read_parquet(run_dir / "grad_norms.parquet")
            except (OSError, ValueError) as exc:
                raise UsageError(f"run folder {run_dir} is damaged: {exc}.") from None
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


def _order(sweep: Sweep, values: dict[str, Any]) -> tuple[Any, ...]:
    """A sort key for option values: numbers in numeric order, names in the order the sweep lists them."""
    key = []
    for name, value in values.items():
        if isinstance(value, str):
            listed = [v for v in dict.fromkeys(sweep.runs[name])]
            key.append(listed.index(value) if value in listed else len(listed))
        else:
            key.append(value)
    return tuple(key)


def _groups(sweep: Sweep, keys: list[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Groups of ``runs`` by ``keys`` in a readable order (see :func:`_order`)."""
    out = [(dict(zip(keys, key)), g) for key, g in sweep.runs.groupby(keys, sort=False)]
    return sorted(out, key=lambda kg: _order(sweep, kg[0]))


def summary_table(sweep: Sweep) -> pd.DataFrame:
    """Per (varied option ×) arch × depth: counts and mean/std over seeds (numbers stay numeric).

    Columns: the varied options, ``arch``, ``depth``, ``n_runs``, ``n_complete``, ``n_diverged``,
    ``n_failed``, ``n_missing``, ``<measure>_mean`` and ``<measure>_std`` for ``final_test_acc``,
    ``final_train_loss``, ``log10_grad_ratio_first``, ``log10_grad_ratio_last`` and
    ``updates_to_90pct_acc`` (over the runs that reached 90 %), and ``n_reached_90pct_acc``.
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
            ("log10_grad_ratio_first", finished), ("log10_grad_ratio_last", finished),
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
    order = sorted(range(len(out)), key=lambda i: _order(sweep, out.loc[i, keys].to_dict()))
    return out.loc[order].reset_index(drop=True)


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
        row["test acc (%)"] = _pm(r["final_test_acc_mean"], r["final_test_acc_std"], n_done, 2, 100.0)
        row["train loss"] = _pm(r["final_train_loss_mean"], r["final_train_loss_std"], n_done, 4)
        row["log10 grad ratio, first step"] = _pm(r["log10_grad_ratio_first_mean"], r["log10_grad_ratio_first_std"], n_fin, 2)
        row["log10 grad ratio, last step"] = _pm(r["log10_grad_ratio_last_mean"], r["log10_grad_ratio_last_std"], n_fin, 2)
        n_hit = int(r["n_reached_90pct_acc"])
        if n_done == 0:
            row["updates to 90 % acc"] = "—"
        elif n_hit == 0:
            row["updates to 90 % acc"] = "not reached"
        else:
            text = _pm(r["updates_to_90pct_acc_mean"], r["updates_to_90pct_acc_std"], n_hit, 0)
            row["updates to 90 % acc"] = text if n_hit == n_done else f"{text} ({n_hit} of {n_done} reached)"
        row["runs"] = str(int(r["n_runs"]))
        row["diverged / failed / missing"] = f"{int(r['n_diverged'])} / {int(r['n_failed'])} / {int(r['n_missing'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def headline_display(table: pd.DataFrame) -> pd.DataFrame:
    """The headline table as strings: accuracy in %, log10 ratios with two decimals."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        values = table[col]
        if col.endswith("_test_acc"):
            # NaN accuracy only means "no complete run" (a complete run always has one)
            out[f"{col[: -len('_test_acc')]} test acc (%)"] = ["—" if pd.isna(v) else _num(v * 100, 2) for v in values]
        elif "_log10_grad_ratio_" in col:
            arch, when = col.split("_log10_grad_ratio_")
            out[f"{arch} log10 grad ratio, {when} step"] = [_num(float(v), 2) for v in values]
        else:
            out[col] = [_option_text(col, v) for v in values]
    return out.reset_index(drop=True)


def headline_markdown(table: pd.DataFrame) -> str:
    """The headline table (from :func:`headline_table`) as Markdown, as ``resgrad report`` prints it."""
    return markdown_table(headline_display(table)).rstrip("\n")


# ---------------------------------------------------------------- figures

WHEN = ("first recorded step", "last recorded step")
# How a value a log axis cannot show is marked: marker, position on the axis (0 bottom, 1 top), words.
_BAD = {
    "zero": ("v", 0.0, "zero (▼ at the bottom edge)"),
    "inf": ("^", 1.0, "infinite (▲ at the top edge)"),
    "nan": ("X", 0.0, "NaN (✕ at the bottom edge)"),
}


@dataclass
class _Marks:
    """Counts of the values drawn as edge markers instead of on the line."""

    zero: int = 0
    inf: int = 0
    nan: int = 0

    def add(self, kind: str, n: int) -> None:
        setattr(self, kind, getattr(self, kind) + n)

    @property
    def kinds(self) -> list[str]:
        return [k for k in _BAD if getattr(self, k)]

    def sentence(self, what: str) -> str:
        counts = ", ".join(f"{getattr(self, k)} {_BAD[k][2]}" for k in _BAD)
        return (f"{what.capitalize()} a log axis cannot show are marked per run at the axis edge and left out of "
                f"the mean line: {counts}.")


def _bad_kind(values: np.ndarray) -> np.ndarray:
    """'nan', 'inf' (+inf) or 'zero' (zero, negative or -inf) for each value that is not finite and positive."""
    return np.where(np.isnan(values), "nan", np.where(values > 0, "inf", "zero"))


def _draw(ax: Any, data: pd.DataFrame, x: str, y: str, hue: str, colors: dict[Any, Any], marks: _Marks,
          band: bool) -> None:
    """Mean line over seeds per hue level (band: min–max), on a log y axis; edge markers for the rest."""
    import seaborn as sns

    values = data[y].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values > 0)
    good = data[ok]
    for level, color in colors.items():
        part = good[good[hue] == level]
        if len(part):
            sns.lineplot(data=part, x=x, y=y, ax=ax, color=color, estimator="mean",
                         errorbar=("pi", 100) if band else None, legend=False, linewidth=1.4)
    ax.set_yscale("log")
    bad = data[~ok]
    if len(bad):
        kinds = _bad_kind(bad[y].to_numpy(dtype="float64"))
        for kind, (marker, edge, _) in _BAD.items():
            sel = bad[kinds == kind]
            if len(sel):
                marks.add(kind, len(sel))
                ax.scatter(sel[x].to_numpy(dtype="float64"), np.full(len(sel), edge), marker=marker, s=42,
                           c=[colors[h] for h in sel[hue]], edgecolors="black", linewidths=0.6,
                           transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)


def _legend(fig: Any, title: str, colors: dict[Any, Any], band: bool, kinds: Sequence[str], label: Callable[[Any], str] = str) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color=c, lw=2, label=label(level)) for level, c in colors.items()]
    if band:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label="min–max over seeds"))
    names = {"zero": "zero", "inf": "infinite", "nan": "NaN"}
    for kind in kinds:
        handles.append(Line2D([], [], ls="", marker=_BAD[kind][0], markersize=7, color="0.6",
                              markeredgecolor="black", label=names[kind]))
    fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)


def _combos(sweep: Sweep) -> list[tuple[str, dict[str, Any]]]:
    """(label, {option: value}) for each combination of the varied facet options; one unlabelled entry if none."""
    facets = sweep.facets
    if not facets:
        return [("", {})]
    combos = sorted(sweep.runs[facets].drop_duplicates().to_dict("records"), key=lambda c: _order(sweep, c))
    return [(", ".join(f"{k}={_option_text(k, v)}" for k, v in c.items()), c) for c in combos]


def _where(frame: pd.DataFrame, **values: Any) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for k, v in values.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def _figure(nrows: int, ncols: int, title: str, sharey: bool = True) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(3.3 * ncols + 1.7, 2.5 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _panel_title(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _depth_colors(sweep: Sweep) -> dict[int, Any]:
    import seaborn as sns

    depths = sweep.depths
    return dict(zip(depths, sns.color_palette("viridis_r" if len(depths) > 1 else "viridis", len(depths))))


def _arch_colors(sweep: Sweep) -> dict[str, Any]:
    import seaborn as sns

    spare = iter(sns.color_palette("tab10"))
    return {a: ARCH_COLORS.get(a) or next(spare) for a in sweep.archs}


def _seed_note(sweep: Sweep) -> tuple[bool, str]:
    n = sweep.runs["seed"].nunique()
    if n > 1:
        return True, f"Lines: mean over {n} seeds; band: min–max over seeds."
    return False, "Lines: one seed per point (no band)."


def _profile_figure(sweep: Sweep, quantity: str, title: str, x_label: str, y_label: str, what: str) -> tuple[Any, str]:
    """Figures 1 and 2: a norm per layer (or block) at the first and last recorded step, arch side by side."""
    g = sweep.grad_norms
    g = g[g["quantity"] == quantity]
    steps = g.groupby("run_id")["step"]
    snap = pd.concat([
        g[g["step"] == steps.transform("min")].assign(when=WHEN[0]),
        g[g["step"] == steps.transform("max")].assign(when=WHEN[1]),
    ], ignore_index=True)
    combos = _combos(sweep)
    rows = [(label, combo, when) for label, combo in combos for when in WHEN]
    fig, axes = _figure(len(rows), len(sweep.archs), title)
    colors = _depth_colors(sweep)
    band, seeds = _seed_note(sweep)
    marks = _Marks()
    for i, (label, combo, when) in enumerate(rows):
        for j, arch in enumerate(sweep.archs):
            ax = axes[i, j]
            data = _where(snap, when=when, arch=arch, **combo)
            at = sorted(set(data["step"]))
            at_text = f"step {at[0]}" if len(at) == 1 else (f"steps {at[0]}–{at[-1]}" if at else "")
            ax.set_title(_panel_title(arch, label) + "\n" + (f"{when} ({at_text})" if at_text else when), fontsize=9)
            if data.empty:
                _empty(ax)
            else:
                _draw(ax, data, "layer_index", "grad_norm", "depth", colors, marks, band)
            ax.set_xlabel(x_label if i == len(rows) - 1 else "")
            ax.set_ylabel(y_label if j == 0 else "")
    _legend(fig, "depth", colors, band, marks.kinds)
    caption = (f"{what} at each run's first and last recorded step; columns: arch, one line per depth. "
               f"{seeds} {marks.sentence('norms')}")
    return fig, caption


def figure_weight_grads(sweep: Sweep) -> tuple[Any, str]:
    """Figure 1: weight-gradient norm vs layer index, first and last recorded step, plain and residual side by side."""
    return _profile_figure(
        sweep, "weight_grad", "Weight-gradient norm per layer",
        "layer index (0 = first conv, last = fc)", r"$\|\partial L / \partial W\|_2$",
        "Weight-gradient norm ‖∂L/∂W‖₂ of every weighted layer (x: layer index in forward order)",
    )


def figure_activation_grads(sweep: Sweep) -> tuple[Any, str]:
    """Figure 2: the backward signal (gradient w.r.t. each block's output) vs block index."""
    return _profile_figure(
        sweep, "activation_grad", "Backward signal per block",
        "block index (0 = first block)", r"$\|\partial L / \partial h\|_2$",
        "Backward signal ‖∂L/∂h‖₂, the gradient with respect to each block's output h (x: block index)",
    )


def figure_grads_over_steps(sweep: Sweep) -> tuple[Any, str]:
    """Figure 3: weight-gradient norm over training steps for the first, middle and last weighted layer."""
    g = sweep.grad_norms
    g = g[g["quantity"] == "weight_grad"]
    last = g.groupby("run_id")["layer_index"].transform("max")
    positions = {
        "first layer": g["layer_index"] == 0,
        "middle layer": g["layer_index"] == last // 2,
        "last layer": g["layer_index"] == last,
    }
    combos = _combos(sweep)
    rows = [(arch, label, combo) for label, combo in combos for arch in sweep.archs]
    fig, axes = _figure(len(rows), len(positions), "Weight-gradient norm during training")
    colors = _depth_colors(sweep)
    band, seeds = _seed_note(sweep)
    marks = _Marks()
    for i, (arch, label, combo) in enumerate(rows):
        for j, (position, mask) in enumerate(positions.items()):
            ax = axes[i, j]
            data = _where(g[mask], arch=arch, **combo)
            ax.set_title(_panel_title(arch, label, position), fontsize=9)
            if data.empty:
                _empty(ax)
            else:
                _draw(ax, data, "step", "grad_norm", "depth", colors, marks, band)
            ax.set_xlabel("training step" if i == len(rows) - 1 else "")
            ax.set_ylabel(r"$\|\partial L / \partial W\|_2$" if j == 0 else "")
    _legend(fig, "depth", colors, band, marks.kinds)
    caption = ("Weight-gradient norm ‖∂L/∂W‖₂ at every recorded step for the first weighted layer (index 0), "
               "the middle one (index ⌊last/2⌋) and the last (the fc layer); rows: arch, one line per depth. "
               f"{seeds} {marks.sentence('norms')}")
    return fig, caption


def _smooth_losses(metrics: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Running mean of the training loss per run over finite values; non-finite losses kept as they are."""
    steps = int(metrics.groupby("run_id")["step"].max().max()) + 1 if len(metrics) else 1
    window = max(1, round(steps / 50))
    parts = []
    for _, m in metrics.groupby("run_id", sort=False):
        loss = m["train_loss"].astype("float64")
        finite = np.isfinite(loss)
        smooth = loss.where(finite).rolling(window, min_periods=1).mean()
        parts.append(m.assign(train_loss=smooth.where(finite, loss)))
    return (pd.concat(parts, ignore_index=True) if parts else metrics), window


def figure_train_loss(sweep: Sweep) -> tuple[Any, str]:
    """Figure 4: training-loss curves, plain vs residual, one panel per depth."""
    metrics, window = _smooth_losses(sweep.metrics)
    combos = _combos(sweep)
    fig, axes = _figure(len(combos), len(sweep.depths), "Training loss: plain vs residual")
    colors = _arch_colors(sweep)
    band, seeds = _seed_note(sweep)
    marks = _Marks()
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(sweep.depths):
            ax = axes[i, j]
            data = _where(metrics, depth=depth, **combo)
            ax.set_title(_panel_title(f"depth {depth}", label), fontsize=9)
            if data.empty:
                _empty(ax)
            else:
                _draw(ax, data, "step", "train_loss", "arch", colors, marks, band)
            ax.set_xlabel("training step" if i == len(combos) - 1 else "")
            ax.set_ylabel("training loss (cross-entropy)" if j == 0 else "")
    # A run blowing up (loss 1e8 before it turns inf) would flatten every other curve: cut the axis and say so.
    finite = metrics["train_loss"][np.isfinite(metrics["train_loss"])] if len(metrics) else pd.Series(dtype=float)
    cut = ""
    if len(finite) and finite.max() > LOSS_CEILING:
        axes[0, 0].set_ylim(top=LOSS_CEILING)
        cut = f" The y axis stops at {LOSS_CEILING:g}: curves that leave through the top went higher."
    _legend(fig, "arch", colors, band, marks.kinds)
    smoothing = f"running mean over {window} steps" if window > 1 else "every step"
    caption = (f"Training loss per step ({smoothing}, non-finite losses not smoothed); one panel per depth, "
               f"one line per arch. {seeds}{cut} {marks.sentence('losses')}")
    return fig, caption


def _marker(arch: str) -> str:
    return "o" if "plain" in arch else "s"


def _dashes(arch: str) -> str:
    return "--" if "plain" in arch else "-"  # where plain and residual coincide, both stay visible


def figure_test_error(sweep: Sweep) -> tuple[Any, str]:
    """Figure 5: final test error vs depth, mean ± std over seeds (He et al. 2016, Fig. 6)."""
    import seaborn as sns
    from matplotlib.lines import Line2D

    runs = sweep.runs.assign(test_error_pct=100.0 * (1.0 - sweep.runs["final_test_acc"]))
    combos = _combos(sweep)
    fig, axes = _figure(1, len(combos), "Final test error vs depth", sharey=True)
    colors = _arch_colors(sweep)
    n_seeds = sweep.runs["seed"].nunique()
    n_div = 0
    for j, (label, combo) in enumerate(combos):
        ax = axes[0, j]
        data = _where(runs, **combo)
        done = data[data["status"] == "complete"]
        for arch, color in reversed(colors.items()):  # the first arch (plain, dashed) on top
            part = done[done["arch"] == arch]
            if len(part):
                sns.lineplot(data=part, x="depth", y="test_error_pct", ax=ax, color=color, estimator="mean",
                             errorbar="sd", err_style="bars", marker=_marker(arch), linestyle=_dashes(arch),
                             legend=False, err_kws={"capsize": 3})
        diverged = data[data["status"] == "diverged"]
        n_div += len(diverged)
        if len(diverged):
            ax.scatter(diverged["depth"].to_numpy(dtype="float64"), np.ones(len(diverged)), marker="X", s=60,
                       c=[colors[a] for a in diverged["arch"]], edgecolors="black", linewidths=0.6,
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
        ax.set_xticks(sweep.depths)
        ax.set_title(label or "all runs", fontsize=9)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel("final test error (%)" if j == 0 else "")
    axes[0, 0].set_ylim(bottom=0)  # after drawing: the axes share y, and set_ylim ends autoscaling
    handles = [Line2D([], [], color=c, lw=2, marker=_marker(a), ls=_dashes(a), label=a) for a, c in colors.items()]
    if n_div:
        handles.append(Line2D([], [], ls="", marker="X", markersize=8, color="0.6", markeredgecolor="black",
                              label="diverged"))
    fig.legend(handles=handles, title="arch", loc="outside right upper", frameon=False)
    counts = {s: int((sweep.runs["status"] == s).sum()) for s in ("diverged", "failed", "missing")}
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed per point"
    caption = (f"Test error (1 − accuracy) at the end of training against depth, {spread}, complete runs only "
               f"(cf. He et al. 2016, Fig. 6). Not drawn: {counts['diverged']} diverged runs (✕ at the top edge, "
               f"no test error), {counts['failed']} failed, {counts['missing']} missing.")
    return fig, caption


FIGURES: list[tuple[str, str, Callable[[Sweep], tuple[Any, str]]]] = [
    ("weight_grad_by_layer", "Weight-gradient norm per layer", figure_weight_grads),
    ("activation_grad_by_block", "Backward signal per block", figure_activation_grads),
    ("grad_norm_over_steps", "Gradient norm during training", figure_grads_over_steps),
    ("train_loss", "Training loss", figure_train_loss),
    ("test_error_vs_depth", "Test error vs depth", figure_test_error),
]


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # the non-interactive Agg canvas, whatever pyplot's backend is
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_figures(sweep: Sweep) -> list[tuple[str, str, bytes, str]]:
    """Every figure as ``(name, title, png_bytes, caption)``."""
    import seaborn as sns

    out = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for name, title, make in FIGURES:
            log.info("figure %s", name)
            fig, caption = make(sweep)
            out.append((name, title, _png(fig), caption))
    return out


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
    "Test accuracy, training loss (mean of the last 50 steps) and updates to 90 % come from complete runs; "
    "gradient ratios from every finished run, complete or diverged.",
    "**Updates to 90 % acc** = step + 1 of the first test evaluation with accuracy ≥ 90 %, so it is only as fine "
    "as the sweep's evaluation interval; runs that never got there are counted as not reached.",
    "Full numbers: `tables/by_arch_depth.csv` (one row per arch and depth, separate mean and std columns), "
    "`tables/headline.csv`, and `tables/runs.csv` (one row per run, with its status and error). "
    "In Python: `resgrad.report.load_sweep(path)` returns these frames and every metric and gradient norm.",
]


def _describe(sweep: Sweep) -> list[str]:
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
        row["note"] = (f"diverged at step {int(r['diverged_at_step'])}" if r["status"] == "diverged" and not pd.isna(r["diverged_at_step"])
                       else str(r["error"]) if r["status"] == "failed" else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _inline_html(text: str) -> str:
    import re

    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _write_table(path: Path, frame: pd.DataFrame) -> Path:
    """CSV with NaN written as ``NaN`` (visible, and read back as NaN by pandas), inf as ``inf``."""
    return atomic_write(path, lambda p: frame.to_csv(p, index=False, na_rep="NaN"))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0 2em}img{max-width:100%;height:auto}figcaption{font-size:.9em;color:#444;max-width:60em}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
"""


def make_report(sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Report:
    """Write the report of a sweep folder.

    Args:
        sweep_dir: a sweep folder (``sweep.json``, ``runs/``).
        out_dir: where to write (default ``SWEEP_DIR/report``); existing report files there are replaced.

    Returns:
        A :class:`Report` with the paths written and the headline table.

    Raises:
        UsageError: ``sweep_dir`` is not a sweep folder or holds no finished run (nothing is written).
    """
    sweep = load_sweep(sweep_dir)
    if sweep.finished.empty:
        counts = ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in STATUSES if s not in FINISHED)
        raise UsageError(f"sweep folder {sweep_dir} holds no finished run ({counts}); run `resgrad sweep` on it first.")
    out = Path(out_dir) if out_dir is not None else sweep.path / "report"
    if out.exists() and not out.is_dir():
        raise UsageError(f"report folder {out} is a file; give a folder with --out.")

    # Everything is computed in memory first: an error leaves no half report behind.
    figures = render_figures(sweep)
    by_depth = summary_table(sweep)
    headline = headline_table(sweep)
    tables = {"by_arch_depth": by_depth, "headline": headline, "runs": sweep.runs}
    headline_shown = headline_display(headline)
    by_depth_shown = summary_display(by_depth, sweep.facets)
    runs_shown = _runs_display(sweep)

    title = f"resgrad report: {sweep.path.resolve().name}"
    intro = _describe(sweep)
    md = [f"# {title}", "", *(p + "\n" for p in intro)]
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{_inline_html(p)}</p>" for p in intro)]

    def section(heading: str, frame: pd.DataFrame, csv: str, lead: str = "") -> None:
        md.extend([f"## {heading}", "", *([lead, ""] if lead else []), markdown_table(frame),
                   f"CSV: `tables/{csv}.csv`", ""])
        body.extend([f"<h2>{html.escape(heading)}</h2>", *([f"<p>{_inline_html(lead)}</p>"] if lead else []),
                     _html_table(frame), f"<p>CSV: <code>tables/{csv}.csv</code></p>"])

    section("Headline: plain vs residual", headline_shown, "headline",
            "Mean over seeds of the final test accuracy and of log10(first-layer / last-layer weight-gradient norm) "
            "at the first and the last recorded step.")
    md.extend(["## Figures", ""])
    body.append("<h2>Figures</h2>")
    for i, (name, heading, png, caption) in enumerate(figures, 1):
        md.extend([f"### {i}. {heading}", "", f"![{heading}](figures/{name}.png)", "", f"*{caption}*", ""])
        data = base64.b64encode(png).decode("ascii")
        body.append(f"<h3>{i}. {html.escape(heading)}</h3><figure><img alt=\"{html.escape(heading)}\" "
                    f"src=\"data:image/png;base64,{data}\"><figcaption>{_inline_html(caption)}</figcaption></figure>")
    section("Per arch and depth", by_depth_shown, "by_arch_depth")
    section("Runs", runs_shown, "runs")
    md.extend(["## How to read the tables", "", *(f"- {n}" for n in NOTES), ""])
    body.extend(["<h2>How to read the tables</h2><ul>", *(f"<li>{_inline_html(n)}</li>" for n in NOTES), "</ul>"])
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    fig_paths = [write_bytes(out / "figures" / f"{name}.png", png) for name, _, png, _ in figures]
    table_paths = [_write_table(out / "tables" / f"{name}.csv", frame) for name, frame in tables.items()]
    md_path = write_text(out / "report.md", "\n".join(md))
    html_path = write_text(out / "report.html", page)
    log.info("report written to %s", out)
    return Report(out, md_path, html_path, fig_paths, table_paths, headline)
