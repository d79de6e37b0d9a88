"""The report's figures, drawn from a :class:`resgrad.report.sweepdata.Sweep`: the list, and the training-curve figures.

Each ``figure_*`` function returns a matplotlib ``Figure`` and its caption;
:func:`render_figures` draws the figures of :data:`FIGURES` (or those it is given)
as PNG bytes. The gradient-norm figures are in :mod:`resgrad.report.figures_grad`, the
drawing helpers in :mod:`resgrad.report.plotting`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from resgrad.report.figures_grad import (
    figure_activation_grads,
    figure_block_gain,
    figure_grads_over_steps,
    figure_weight_grads,
)
from resgrad.report.plotting import (
    Marks,
    arch_colors,
    arch_marked,
    arch_style,
    draw,
    empty,
    legend,
    not_drawn,
    panel_title,
    panels,
    png,
    run_ids,
    seed_note,
    where,
)
from resgrad.report.sweepdata import Sweep

log = logging.getLogger(__name__)

LOSS_CEILING = 10.0  # top of the training-loss axis when some loss goes above it (chance level is ln 10 = 2.3)


# ---------------------------------------------------------------- training curves and depth


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
    fig, axes = panels(len(combos), len(sweep.depths), "Training loss: plain vs residual")
    colors = arch_colors(sweep.archs)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(sweep.depths):
            ax = axes[i, j]
            data = where(metrics, depth=depth, **combo)
            ax.set_title(panel_title(f"depth {depth}", label), fontsize=9)
            if data.empty:
                empty(ax)
            else:
                draw(ax, data, "step", "train_loss", "arch", colors, marks, band, style=arch_style)
            ax.set_xlabel("training step" if i == len(combos) - 1 else "")
            ax.set_ylabel("training loss (cross-entropy)" if j == 0 else "")
    # A run blowing up (loss 1e8 before it turns inf) would flatten every other curve: cut the axis and say so.
    finite = metrics["train_loss"][np.isfinite(metrics["train_loss"])] if len(metrics) else pd.Series(dtype=float)
    cut = ""
    if len(finite) and finite.max() > LOSS_CEILING:
        axes[0, 0].set_ylim(top=LOSS_CEILING)
        cut = f" The y axis stops at {LOSS_CEILING:g}: curves that leave through the top went higher."
    legend(fig, "arch", colors, band, marks.kinds, style=arch_style)
    smoothing = f"running mean over {window} steps" if window > 1 else "every step"
    caption = (
        f"Training loss per step ({smoothing}, non-finite losses not smoothed); one panel per depth, "
        f"one line per arch; complete and diverged runs. {seeds}{cut} {marks.sentence('losses')}"
    )
    return fig, caption


def figure_test_acc(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 5: test accuracy at each evaluation over updates, one line per arch, a panel per depth."""
    complete = run_ids(sweep, "complete")
    m = sweep.metrics
    evals = m[m["run_id"].isin(complete) & m["test_acc"].notna()]
    evals = evals.assign(updates=evals["step"] + 1, test_acc_pct=100.0 * evals["test_acc"])
    n_points = int(evals.groupby("run_id").size().max()) if len(evals) else 0
    combos = sweep.combos()
    fig, axes = panels(len(combos), len(sweep.depths), "Test accuracy during training")
    colors = arch_colors(sweep.archs)
    band, seeds = seed_note(sweep)
    style = arch_marked if n_points <= 15 else arch_style  # a marker per evaluation while they are few
    per_epoch = sweep.steps_per_epoch
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(sweep.depths):
            ax = axes[i, j]
            data = where(evals, depth=depth, **combo)
            ax.set_title(panel_title(f"depth {depth}", label), fontsize=9)
            if data.empty:
                empty(ax, "no complete run")
            for arch, color in reversed(colors.items()):  # the first arch (plain, dashed) on top
                part = data[data["arch"] == arch]
                if len(part):
                    sns.lineplot(
                        data=part,
                        x="updates",
                        y="test_acc_pct",
                        ax=ax,
                        color=color,
                        estimator="mean",
                        errorbar=("pi", 100) if band else None,
                        legend=False,
                        linewidth=1.4,
                        markersize=4,
                        **style(arch),
                    )
            ax.set_xlim(left=0)
            ax.set_xlabel("updates (optimizer steps)" if i == len(combos) - 1 else "")
            ax.set_ylabel("test accuracy (%)" if j == 0 else "")
            if per_epoch and i == 0:
                top = ax.secondary_xaxis("top", functions=(lambda u: u / per_epoch, lambda e: e * per_epoch))
                top.set_xlabel("epoch", fontsize=8)
                top.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes[0, 0].get_ylim()[1] > 100:  # shared y, autoscaled so that 98 and 99 % stay apart; none above 100
        axes[0, 0].set_ylim(top=100)
    legend(fig, "arch", colors, band, style=style)
    caption = (
        f"Test accuracy (%) at every evaluation ({n_points} per run) against updates (step + 1); "
        f"one panel per depth, one line per arch; complete runs only. {seeds} "
        f"Not drawn: {not_drawn(sweep, ('diverged', 'failed', 'missing'))} runs. "
        "Numbers: `tables/test_acc_by_eval.csv`."
    )
    return fig, caption


def figure_test_error(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 6: final test error vs depth, mean over seeds with min–max bars (cf. He et al. 2016, Fig. 6)."""
    runs = sweep.runs.assign(test_error_pct=100.0 * (1.0 - sweep.runs["final_test_acc"]))
    combos = sweep.combos()
    fig, axes = panels(1, len(combos), "Final test error vs depth", sharey=True)
    colors = arch_colors(sweep.archs)
    n_seeds = sweep.runs["seed"].nunique()
    n_div = 0
    for j, (label, combo) in enumerate(combos):
        ax = axes[0, j]
        data = where(runs, **combo)
        done = data[data["status"] == "complete"]
        for arch, color in reversed(colors.items()):  # the first arch (plain, dashed) on top
            part = done[done["arch"] == arch]
            if len(part):
                sns.lineplot(
                    data=part,
                    x="depth",
                    y="test_error_pct",
                    ax=ax,
                    color=color,
                    estimator="mean",
                    errorbar=("pi", 100) if n_seeds > 1 else None,  # min–max over seeds: within 0–100 %
                    err_style="bars",
                    legend=False,
                    err_kws={"capsize": 3},
                    **arch_marked(arch),
                )
        diverged = data[data["status"] == "diverged"]
        n_div += len(diverged)
        if len(diverged):
            ax.scatter(
                diverged["depth"].to_numpy(dtype="float64"),
                np.ones(len(diverged)),
                marker="X",
                s=60,
                c=[colors[a] for a in diverged["arch"]],
                edgecolors="black",
                linewidths=0.6,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                zorder=5,
            )
        ax.set_xticks(sweep.depths)
        ax.set_title(label or "all runs", fontsize=9)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel("final test error (%)" if j == 0 else "")
    # after drawing: the axes share y, and set_ylim ends autoscaling; an error is within 0–100 %
    axes[0, 0].set_ylim(0, min(100.0, axes[0, 0].get_ylim()[1]))
    diverged_mark = Line2D(
        [], [], ls="", marker="X", markersize=8, color="0.6", markeredgecolor="black", label="diverged"
    )
    legend(fig, "arch", colors, band=False, style=arch_marked, extra=[diverged_mark] if n_div else [])
    counts = {s: int((sweep.runs["status"] == s).sum()) for s in ("diverged", "failed", "missing")}
    spread = f"mean over {n_seeds} seeds, bars: min–max over seeds" if n_seeds > 1 else "one seed per point"
    caption = (
        f"Test error (1 − accuracy) at the end of training against depth, {spread}, complete runs only "
        f"(cf. He et al. 2016, Fig. 6). Not drawn: {counts['diverged']} diverged runs (✕ at the top edge, "
        f"no test error), {counts['failed']} failed, {counts['missing']} missing."
    )
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

# drawn in the report's own section on the gain (resgrad.report.gain)
GAIN_FIGURE: tuple[str, str, Callable[[Sweep], tuple[Figure, str]]] = (
    "block_gain",
    "Backward gain per block",
    figure_block_gain,
)


def render_figures(
    sweep: Sweep,
    figures: Sequence[tuple[str, str, Callable[[Sweep], tuple[Figure, str]]]] | None = None,
) -> list[tuple[str, str, bytes, str]]:
    """Every figure of ``figures`` (default :data:`FIGURES`) as ``(name, heading, png_bytes, caption)``."""
    out = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for name, heading, make in FIGURES if figures is None else figures:
            log.info("figure %s", name)
            fig, caption = make(sweep)
            out.append((name, heading, png(fig), caption))
    return out
