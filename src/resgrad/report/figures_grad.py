"""The report's gradient-norm figures: the norm per layer and per block, over training, and the gain per block.

Each ``figure_*`` function takes a :class:`resgrad.report.sweepdata.Sweep` and returns a
matplotlib ``Figure`` and its caption; :func:`resgrad.report.figures.render_figures`
draws them as PNG.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from resgrad.report.gain import sweep_gains, sweep_other_combos
from resgrad.report.plotting import (
    WHEN,
    Marks,
    arch_style,
    depth_colors,
    draw,
    empty,
    legend,
    panel_title,
    panels,
    run_ids,
    seed_note,
    where,
)
from resgrad.report.sweepdata import Sweep


def _profile_figure(
    sweep: Sweep, quantity: str, title: str, x_label: str, y_label: str, what: str
) -> tuple[Figure, str]:
    """Figures 1 and 2: a norm per layer (or block) at the first and last recorded step, arch side by side.

    The last-step rows use complete runs only: a diverged run's last record comes at another
    time and is often not finite (see :func:`resgrad.report.tables.summary_table`).
    """
    g = sweep.grad_norms
    g = g[g["quantity"] == quantity]
    steps = g.groupby("run_id")["step"]
    complete = run_ids(sweep, "complete")
    snap = pd.concat(
        [
            g[g["step"] == steps.transform("min")].assign(when=WHEN[0]),
            g[(g["step"] == steps.transform("max")) & g["run_id"].isin(complete)].assign(when=WHEN[1]),
        ],
        ignore_index=True,
    )
    combos = sweep.combos()
    rows = [(label, combo, when) for label, combo in combos for when in WHEN]
    fig, axes = panels(len(rows), len(sweep.archs), title)
    colors = depth_colors(sweep)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (label, combo, when) in enumerate(rows):
        for j, arch in enumerate(sweep.archs):
            ax = axes[i, j]
            data = where(snap, when=when, arch=arch, **combo)
            at = sorted(set(data["step"]))
            at_text = f"step {at[0]}" if len(at) == 1 else (f"steps {at[0]}–{at[-1]}" if at else "")
            ax.set_title(panel_title(arch, label) + "\n" + (f"{when} ({at_text})" if at_text else when), fontsize=9)
            if data.empty:
                empty(ax, "no complete run" if when == WHEN[1] else "no finished run")
            else:
                draw(ax, data, "layer_index", "grad_norm", "depth", colors, marks, band)
            ax.set_xlabel(x_label if i == len(rows) - 1 else "")
            ax.set_ylabel(y_label if j == 0 else "")
    legend(fig, "depth", colors, band, marks.kinds)
    n_div = int((sweep.runs["status"] == "diverged").sum())
    left_out = (
        f" The last-step rows show complete runs only ({n_div} diverged runs left out there; "
        "figure 3 follows them over steps)."
        if n_div
        else ""
    )
    caption = (
        f"{what} at each run's first and last recorded step; columns: arch, one line per depth. "
        f"{seeds}{left_out} {marks.sentence('norms')}"
    )
    return fig, caption


def figure_weight_grads(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 1: weight-gradient norm vs layer index, first and last recorded step, plain and residual side by side."""
    return _profile_figure(
        sweep,
        "weight_grad",
        "Weight-gradient norm per layer",
        "layer index (0 = first conv, last = fc)",
        r"$\|\partial L / \partial W\|_2$",
        "Weight-gradient norm ‖∂L/∂W‖₂ of every weighted layer (x: layer index in forward order)",
    )


def figure_activation_grads(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 2: the backward signal (gradient w.r.t. each block's output) vs block index."""
    return _profile_figure(
        sweep,
        "activation_grad",
        "Backward signal per block",
        "block index (0 = first block)",
        r"$\|\partial L / \partial h\|_2$",
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
    fig, axes = panels(len(rows), len(positions), "Weight-gradient norm during training")
    colors = depth_colors(sweep)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (arch, label, combo) in enumerate(rows):
        for j, (position, mask) in enumerate(positions.items()):
            ax = axes[i, j]
            data = where(g[mask], arch=arch, **combo)
            ax.set_title(panel_title(arch, label, position), fontsize=9)
            if data.empty:
                empty(ax)
            else:
                draw(ax, data, "step", "grad_norm", "depth", colors, marks, band)
            ax.set_xlabel("training step" if i == len(rows) - 1 else "")
            ax.set_ylabel(r"$\|\partial L / \partial W\|_2$" if j == 0 else "")
    legend(fig, "depth", colors, band, marks.kinds)
    caption = (
        "Weight-gradient norm ‖∂L/∂W‖₂ at every recorded step for the first weighted layer (index 0), "
        "the middle one (index ⌊last/2⌋) and the last (the fc layer); rows: arch, one line per depth; "
        f"complete and diverged runs. {seeds} {marks.sentence('norms')}"
    )
    return fig, caption


# ---------------------------------------------------------------- the backward gain per block (resgrad.report.gain)

SIGMA_PRIME_MAX = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25}  # the largest value σ′ takes


def figure_block_gain(sweep: Sweep) -> tuple[Figure, str]:
    """The backward gain per block and the mean σ′ of the block's activations, a column per activation.

    Rows: at each run's first and at its last recorded step (complete runs only there), the gain
    ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ and below it the mean σ′; colour: depth; dashed plain, solid residual.
    """
    gains = sweep_gains(sweep)
    steps = gains.groupby("run_id")["step"]
    complete = run_ids(sweep, "complete")
    snap = pd.concat(
        [
            gains[gains["step"] == steps.transform("min")].assign(when=WHEN[0]),
            gains[(gains["step"] == steps.transform("max")) & gains["run_id"].isin(complete)].assign(when=WHEN[1]),
        ],
        ignore_index=True,
    )
    activations = list(dict.fromkeys(sweep.runs["activation"]))
    rows = [
        (label, combo, when, what)
        for label, combo in sweep_other_combos(sweep)
        for when in WHEN
        for what in ("gain", "act_deriv")
    ]
    fig = Figure(figsize=(max(3.3 * len(activations) + 1.7, 6.5), 2.3 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), len(activations), squeeze=False, sharey="row")
    fig.suptitle("Backward gain per block and the mean σ′ of its activations", fontweight="bold")
    colors = depth_colors(sweep)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (label, combo, when, what) in enumerate(rows):
        for j, activation in enumerate(activations):
            ax = axes[i, j]
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            data = where(snap, when=when, activation=activation, **combo)
            ax.set_title(panel_title(activation, label, when), fontsize=9)
            if what == "act_deriv":
                data = data[data["act_deriv"].notna()] if data["act_deriv"].notna().any() else data.iloc[:0]
            if data.empty:
                empty(
                    ax,
                    "no complete run"
                    if when == WHEN[1] and what == "gain"
                    else ("no act_deriv recorded" if what == "act_deriv" else "no finished run"),
                )
            for arch in sweep.archs:
                part = data[data["arch"] == arch]
                if len(part):
                    draw(
                        ax,
                        part,
                        "block_index",
                        what,
                        "depth",
                        colors,
                        marks,
                        band,
                        style=lambda level, arch=arch: arch_style(arch),
                    )
            if what == "act_deriv":  # σ′ lies in [0, 1]: a linear axis, the same for every activation
                ax.set_yscale("linear")
                ax.set_ylim(0, 1.05)
            ref = 1.0 if what == "gain" else SIGMA_PRIME_MAX.get(activation)
            if ref is not None:
                ax.axhline(ref, color="0.35", lw=0.9, ls=":", zorder=1)
            ax.set_xlabel("block l (1 = second block)" if i == len(rows) - 1 else "")
            ax.set_ylabel(("gain ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖" if what == "gain" else "mean σ′ of block l") if j == 0 else "")
    archs = [Line2D([], [], color="0.2", lw=1.6, label=a, **arch_style(a)) for a in sweep.archs]
    ref_line = Line2D([], [], color="0.35", lw=0.9, ls=":", label="gain = 1, max σ′")
    legend(fig, "depth", colors, band, marks.kinds, extra=[*archs, ref_line])
    caption = (
        "Backward gain of block l, ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖ from the recorded backward signal (below 1: the "
        "signal shrinks on its way back through the block; dotted line at 1), and under it the mean σ′ of "
        "the block's activation modules (act_deriv; dotted line: the largest σ′, 1/4 for the sigmoid), at "
        "each run's first recorded step and at its last (complete runs only); a column per activation, "
        f"colour: depth, dashed: plain, solid: residual. {seeds} {marks.sentence('values')} "
        "Numbers: `tables/block_gain.csv`."
    )
    return fig, caption
