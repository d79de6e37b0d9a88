"""The report's seaborn figures, drawn from a :class:`resgrad.report.Sweep`.

Each ``figure_*`` function returns a matplotlib ``Figure`` and its caption;
:func:`render_figures` draws them all as PNG bytes. Norms are drawn on a log
axis; a norm that axis cannot show (zero, inf, NaN) is marked at the axis edge
and counted in the caption, never dropped silently.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:  # report.py imports this module; figures only need the Sweep's attributes
    from resgrad.report import Sweep

log = logging.getLogger(__name__)

ARCH_COLORS = {"plain": "#c0392b", "residual": "#2471a3", "seed-plain": "#e67e22", "seed-residual": "#17a589"}
LOSS_CEILING = 10.0  # top of the training-loss axis when some loss goes above it (chance level is ln 10 = 2.3)
WHEN = ("first recorded step", "last recorded step")
# How a value a log axis cannot show is marked: marker, position on the axis (0 bottom, 1 top), words.
_BAD = {
    "zero": ("v", 0.0, "zero (▼ at the bottom edge)"),
    "inf": ("^", 1.0, "infinite (▲ at the top edge)"),
    "nan": ("X", 0.0, "NaN (✕ at the bottom edge)"),
}
_BAD_LEGEND = {"zero": "zero", "inf": "infinite", "nan": "NaN"}


# ---------------------------------------------------------------- drawing helpers


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
          band: bool, style: Callable[[Any], dict[str, str]] | None = None) -> None:
    """Mean line over seeds per hue level (band: min–max), on a log y axis; edge markers for the rest.

    ``style``: extra line properties per hue level (e.g. :func:`_arch_style`); the first level is then drawn last,
    on top.
    """
    values = data[y].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values > 0)
    good = data[ok]
    for level, color in reversed(colors.items()) if style else colors.items():
        part = good[good[hue] == level]
        if len(part):
            sns.lineplot(data=part, x=x, y=y, ax=ax, color=color, estimator="mean",
                         errorbar=("pi", 100) if band else None, legend=False, linewidth=1.4,
                         **(style(level) if style else {}))
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


def _legend(fig: Figure, title: str, colors: dict[Any, Any], band: bool, kinds: Sequence[str] = (),
            style: Callable[[Any], dict[str, str]] | None = None, extra: Sequence[Any] = ()) -> None:
    """One legend for the whole figure: a line per hue level (drawn with ``style``), the band, the edge markers
    used, and ``extra`` handles."""
    handles: list[Any] = [
        Line2D([], [], color=c, lw=2, label=str(level), **(style(level) if style else {}))
        for level, c in colors.items()
    ]
    if band:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label="min–max over seeds"))
    for kind in kinds:
        handles.append(Line2D([], [], ls="", marker=_BAD[kind][0], markersize=7, color="0.6",
                              markeredgecolor="black", label=_BAD_LEGEND[kind]))
    handles.extend(extra)
    fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)


def _where(frame: pd.DataFrame, **values: Any) -> pd.DataFrame:
    """The rows of ``frame`` whose columns equal ``values``."""
    mask = np.ones(len(frame), dtype=bool)
    for k, v in values.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def _figure(nrows: int, ncols: int, title: str, sharey: bool = True) -> tuple[Figure, np.ndarray]:
    # at least 6.5 in wide: one panel beside the legend would leave the title no room
    fig = Figure(figsize=(max(3.3 * ncols + 1.7, 6.5), 2.5 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def _empty(ax: Any, text: str = "no finished run") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _panel_title(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _depth_colors(sweep: Sweep) -> dict[int, Any]:
    depths = sweep.depths
    return dict(zip(depths, sns.color_palette("viridis_r" if len(depths) > 1 else "viridis", len(depths))))


def _arch_colors(sweep: Sweep) -> dict[str, Any]:
    spare = iter(sns.color_palette("tab10"))
    return {a: ARCH_COLORS.get(a) or next(spare) for a in sweep.archs}


def _arch_style(arch: str) -> dict[str, str]:
    """Plain dashed, residual solid: where their lines coincide, both stay visible."""
    return {"linestyle": "--" if "plain" in arch else "-"}


def _arch_marked(arch: str) -> dict[str, str]:
    """:func:`_arch_style` with a marker per point: circles for plain, squares for residual."""
    return {**_arch_style(arch), "marker": "o" if "plain" in arch else "s"}


def _seed_note(sweep: Sweep) -> tuple[bool, str]:
    """(draw a band?, the caption's sentence about seeds)."""
    n = sweep.runs["seed"].nunique()
    if n > 1:
        return True, f"Lines: mean over {n} seeds; band: min–max over seeds."
    return False, "Lines: one seed per point (no band)."


def _run_ids(sweep: Sweep, status: str) -> set[str]:
    return set(sweep.runs.loc[sweep.runs["status"] == status, "run_id"])


def _not_drawn(sweep: Sweep, statuses: Sequence[str]) -> str:
    """'3 diverged, 1 failed, 0 missing' for the given statuses."""
    return ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in statuses)


# ---------------------------------------------------------------- the figures


def _profile_figure(sweep: Sweep, quantity: str, title: str, x_label: str, y_label: str,
                    what: str) -> tuple[Figure, str]:
    """Figures 1 and 2: a norm per layer (or block) at the first and last recorded step, arch side by side.

    The last-step rows use complete runs only: a diverged run's last record comes at another
    time and is often not finite (see :func:`resgrad.report.summary_table`).
    """
    g = sweep.grad_norms
    g = g[g["quantity"] == quantity]
    steps = g.groupby("run_id")["step"]
    complete = _run_ids(sweep, "complete")
    snap = pd.concat([
        g[g["step"] == steps.transform("min")].assign(when=WHEN[0]),
        g[(g["step"] == steps.transform("max")) & g["run_id"].isin(complete)].assign(when=WHEN[1]),
    ], ignore_index=True)
    combos = sweep.combos()
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
                _empty(ax, "no complete run" if when == WHEN[1] else "no finished run")
            else:
                _draw(ax, data, "layer_index", "grad_norm", "depth", colors, marks, band)
            ax.set_xlabel(x_label if i == len(rows) - 1 else "")
            ax.set_ylabel(y_label if j == 0 else "")
    _legend(fig, "depth", colors, band, marks.kinds)
    n_div = int((sweep.runs["status"] == "diverged").sum())
    left_out = (f" The last-step rows show complete runs only ({n_div} diverged runs left out there; "
                "figure 3 follows them over steps)." if n_div else "")
    caption = (f"{what} at each run's first and last recorded step; columns: arch, one line per depth. "
               f"{seeds}{left_out} {marks.sentence('norms')}")
    return fig, caption


def figure_weight_grads(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 1: weight-gradient norm vs layer index, first and last recorded step, plain and residual side by side."""
    return _profile_figure(
        sweep, "weight_grad", "Weight-gradient norm per layer",
        "layer index (0 = first conv, last = fc)", r"$\|\partial L / \partial W\|_2$",
        "Weight-gradient norm ‖∂L/∂W‖₂ of every weighted layer (x: layer index in forward order)",
    )


def figure_activation_grads(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 2: the backward signal (gradient w.r.t. each block's output) vs block index."""
    return _profile_figure(
        sweep, "activation_grad", "Backward signal per block",
        "block index (0 = first block)", r"$\|\partial L / \partial h\|_2$",
        "Backward signal ‖∂L/∂h‖₂, the gradient with respect to each block's output h (x: block index)",
    )


def figure_grads_over_steps(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 3: weight-gradient norm over training steps for the first, middle and last weighted layer."""
    g = sweep.grad_norms
    g = g[g["quantity"] == "weight_grad"]
    last = g.groupby("run_id")["layer_index"].transform("max")
    positions = {
        "first layer": g["layer_index"] == 0,
        "middle layer": g["layer_index"] == last // 2,
        "last layer": g["layer_index"] == last,
    }
    rows = [(arch, label, combo) for label, combo in sweep.combos() for arch in sweep.archs]
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
               "the middle one (index ⌊last/2⌋) and the last (the fc layer); rows: arch, one line per depth; "
               f"complete and diverged runs. {seeds} {marks.sentence('norms')}")
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


def figure_train_loss(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 4: training-loss curves, plain vs residual, one panel per depth."""
    metrics, window = _smooth_losses(sweep.metrics)
    combos = sweep.combos()
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
                _draw(ax, data, "step", "train_loss", "arch", colors, marks, band, style=_arch_style)
            ax.set_xlabel("training step" if i == len(combos) - 1 else "")
            ax.set_ylabel("training loss (cross-entropy)" if j == 0 else "")
    # A run blowing up (loss 1e8 before it turns inf) would flatten every other curve: cut the axis and say so.
    finite = metrics["train_loss"][np.isfinite(metrics["train_loss"])] if len(metrics) else pd.Series(dtype=float)
    cut = ""
    if len(finite) and finite.max() > LOSS_CEILING:
        axes[0, 0].set_ylim(top=LOSS_CEILING)
        cut = f" The y axis stops at {LOSS_CEILING:g}: curves that leave through the top went higher."
    _legend(fig, "arch", colors, band, marks.kinds, style=_arch_style)
    smoothing = f"running mean over {window} steps" if window > 1 else "every step"
    caption = (f"Training loss per step ({smoothing}, non-finite losses not smoothed); one panel per depth, "
               f"one line per arch; complete and diverged runs. {seeds}{cut} {marks.sentence('losses')}")
    return fig, caption


def figure_test_acc(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 5: test accuracy at each evaluation over updates, one line per arch, a panel per depth."""
    complete = _run_ids(sweep, "complete")
    m = sweep.metrics
    evals = m[m["run_id"].isin(complete) & m["test_acc"].notna()]
    evals = evals.assign(updates=evals["step"] + 1, test_acc_pct=100.0 * evals["test_acc"])
    n_points = int(evals.groupby("run_id").size().max()) if len(evals) else 0
    combos = sweep.combos()
    fig, axes = _figure(len(combos), len(sweep.depths), "Test accuracy during training")
    colors = _arch_colors(sweep)
    band, seeds = _seed_note(sweep)
    style = _arch_marked if n_points <= 15 else _arch_style  # a marker per evaluation while they are few
    per_epoch = sweep.steps_per_epoch
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(sweep.depths):
            ax = axes[i, j]
            data = _where(evals, depth=depth, **combo)
            ax.set_title(_panel_title(f"depth {depth}", label), fontsize=9)
            if data.empty:
                _empty(ax, "no complete run")
            for arch, color in reversed(colors.items()):  # the first arch (plain, dashed) on top
                part = data[data["arch"] == arch]
                if len(part):
                    sns.lineplot(data=part, x="updates", y="test_acc_pct", ax=ax, color=color, estimator="mean",
                                 errorbar=("pi", 100) if band else None, legend=False, linewidth=1.4,
                                 markersize=4, **style(arch))
            ax.set_xlim(left=0)
            ax.set_xlabel("updates (optimizer steps)" if i == len(combos) - 1 else "")
            ax.set_ylabel("test accuracy (%)" if j == 0 else "")
            if per_epoch and i == 0:
                top = ax.secondary_xaxis("top", functions=(lambda u: u / per_epoch, lambda e: e * per_epoch))
                top.set_xlabel("epoch", fontsize=8)
                top.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes[0, 0].get_ylim()[1] > 100:  # shared y, autoscaled so that 98 and 99 % stay apart; none above 100
        axes[0, 0].set_ylim(top=100)
    _legend(fig, "arch", colors, band, style=style)
    caption = (f"Test accuracy (%) at every evaluation ({n_points} per run) against updates (step + 1); "
               f"one panel per depth, one line per arch; complete runs only. {seeds} "
               f"Not drawn: {_not_drawn(sweep, ('diverged', 'failed', 'missing'))} runs. "
               "Numbers: `tables/test_acc_by_eval.csv`.")
    return fig, caption


def figure_test_error(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 6: final test error vs depth, mean ± std over seeds (He et al. 2016, Fig. 6)."""
    runs = sweep.runs.assign(test_error_pct=100.0 * (1.0 - sweep.runs["final_test_acc"]))
    combos = sweep.combos()
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
                             errorbar="sd", err_style="bars", legend=False, err_kws={"capsize": 3},
                             **_arch_marked(arch))
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
    diverged_mark = Line2D([], [], ls="", marker="X", markersize=8, color="0.6", markeredgecolor="black",
                           label="diverged")
    _legend(fig, "arch", colors, band=False, style=_arch_marked, extra=[diverged_mark] if n_div else [])
    counts = {s: int((sweep.runs["status"] == s).sum()) for s in ("diverged", "failed", "missing")}
    spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed per point"
    caption = (f"Test error (1 − accuracy) at the end of training against depth, {spread}, complete runs only "
               f"(cf. He et al. 2016, Fig. 6). Not drawn: {counts['diverged']} diverged runs (✕ at the top edge, "
               f"no test error), {counts['failed']} failed, {counts['missing']} missing.")
    return fig, caption


# name, heading, function; the report numbers the figures in this order
FIGURES: list[tuple[str, str, Callable[[Sweep], tuple[Figure, str]]]] = [
    ("weight_grad_by_layer", "Weight-gradient norm per layer", figure_weight_grads),
    ("activation_grad_by_block", "Backward signal per block", figure_activation_grads),
    ("grad_norm_over_steps", "Gradient norm during training", figure_grads_over_steps),
    ("train_loss", "Training loss", figure_train_loss),
    ("test_acc_over_steps", "Test accuracy during training", figure_test_acc),
    ("test_error_vs_depth", "Test error vs depth", figure_test_error),
]


# ---------------------------------------------------------------- the backward gain per block (resgrad.gain)

SIGMA_PRIME_MAX = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25}  # the largest value σ′ takes


def figure_block_gain(sweep: Sweep) -> tuple[Figure, str]:
    """The backward gain per block and the mean σ′ of the block's activations, a column per activation.

    Rows: at each run's first and at its last recorded step (complete runs only there), the gain
    ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ and below it the mean σ′; colour: depth; dashed plain, solid residual.
    """
    from resgrad.gain import sweep_gains, sweep_other_combos

    gains = sweep_gains(sweep)
    steps = gains.groupby("run_id")["step"]
    complete = _run_ids(sweep, "complete")
    snap = pd.concat([
        gains[gains["step"] == steps.transform("min")].assign(when=WHEN[0]),
        gains[(gains["step"] == steps.transform("max")) & gains["run_id"].isin(complete)].assign(when=WHEN[1]),
    ], ignore_index=True)
    activations = list(dict.fromkeys(sweep.runs["activation"]))
    rows = [(label, combo, when, what) for label, combo in sweep_other_combos(sweep)
            for when in WHEN for what in ("gain", "act_deriv")]
    fig = Figure(figsize=(max(3.3 * len(activations) + 1.7, 6.5), 2.3 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), len(activations), squeeze=False, sharey="row")
    fig.suptitle("Backward gain per block and the mean σ′ of its activations", fontweight="bold")
    colors = _depth_colors(sweep)
    band, seeds = _seed_note(sweep)
    marks = _Marks()
    for i, (label, combo, when, what) in enumerate(rows):
        for j, activation in enumerate(activations):
            ax = axes[i, j]
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            data = _where(snap, when=when, activation=activation, **combo)
            ax.set_title(_panel_title(activation, label, when), fontsize=9)
            if what == "act_deriv":
                data = data[data["act_deriv"].notna()] if data["act_deriv"].notna().any() else data.iloc[:0]
            if data.empty:
                _empty(ax, "no complete run" if when == WHEN[1] and what == "gain" else
                       ("no act_deriv recorded" if what == "act_deriv" else "no finished run"))
            for arch in sweep.archs:
                part = data[data["arch"] == arch]
                if len(part):
                    _draw(ax, part, "block_index", what, "depth", colors, marks, band,
                          style=lambda level, arch=arch: _arch_style(arch))
            if what == "act_deriv":  # σ′ lies in [0, 1]: a linear axis, the same for every activation
                ax.set_yscale("linear")
                ax.set_ylim(0, 1.05)
            ref = 1.0 if what == "gain" else SIGMA_PRIME_MAX.get(activation)
            if ref is not None:
                ax.axhline(ref, color="0.35", lw=0.9, ls=":", zorder=1)
            ax.set_xlabel("block l (1 = second block)" if i == len(rows) - 1 else "")
            ax.set_ylabel(("gain ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖" if what == "gain" else "mean σ′ of block l") if j == 0 else "")
    archs = [Line2D([], [], color="0.2", lw=1.6, label=a, **_arch_style(a)) for a in sweep.archs]
    ref_line = Line2D([], [], color="0.35", lw=0.9, ls=":", label="gain = 1, max σ′")
    _legend(fig, "depth", colors, band, marks.kinds, extra=[*archs, ref_line])
    caption = ("Backward gain of block l, ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ from the recorded backward signal (below 1: the "
               "signal shrinks on its way back through the block; dotted line at 1), and under it the mean σ′ of "
               "the block's activation modules (act_deriv; dotted line: the largest σ′, 1/4 for the sigmoid), at "
               "each run's first recorded step and at its last (complete runs only); a column per activation, "
               f"colour: depth, dashed: plain, solid: residual. {seeds} {marks.sentence('values')} "
               "Numbers: `tables/block_gain.csv`.")
    return fig, caption


GAIN_FIGURE: tuple[str, str, Callable[[Sweep], tuple[Figure, str]]] = (
    "block_gain", "Backward gain per block", figure_block_gain)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # the non-interactive Agg canvas, whatever pyplot's backend is
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_figures(sweep: Sweep, figures: Sequence[tuple[str, str, Callable[[Sweep], tuple[Figure, str]]]] | None = None,
                   ) -> list[tuple[str, str, bytes, str]]:
    """Every figure of ``figures`` (default :data:`FIGURES`) as ``(name, heading, png_bytes, caption)``."""
    out = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for name, heading, make in FIGURES if figures is None else figures:
            log.info("figure %s", name)
            fig, caption = make(sweep)
            out.append((name, heading, _png(fig), caption))
    return out
