"""The report's section "Theory and measurement": its figures, its words and its tables (:mod:`resgrad.report.theory`).

Figures: each block's measured gain against its predicted gain (a 45° line), the backward signal
of plain nets with the predicted one drawn over it, and measured/predicted over training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from resgrad.report.gain import WHEN, sweep_other_combos, table_keys
from resgrad.report.plotting import (
    Marks,
    arch_colors,
    arch_style,
    depth_colors,
    draw,
    empty,
    legend,
    panel_title,
    png,
    seed_note,
    where,
)
from resgrad.report.sweepdata import Sweep
from resgrad.report.theory import (
    AGREEMENT,
    Theory,
    at_first_and_last,
    ratio_over_steps,
    sweep_theory,
    tap_table,
    theory_table,
)
from resgrad.report.theory_text import (
    WHEN_LABEL,
    agreement_sentences,
    exact_sentence,
    tap_sentence,
    theory_display,
    training_sentence,
)

FIGURES = {
    "gain_vs_theory": "Measured against predicted gain per block",
    "signal_vs_theory": "Backward signal of plain nets, measured and predicted",
    "theory_ratio_over_steps": "Measured / predicted gain during training",
}
BAND = "#dcefdc"  # the 0.85–1.15 agreement band, apart from the grey of the seeds' band
TABLES = {
    "gain_vs_theory": "measured/predicted backward gain per block (median, quartiles, min, max) per activation, arch "
    "and depth at the first and last recorded step (runs that record weight_norm and act_deriv_sq, no batch norm)",
    "theory_tap_shape": "how far the prediction's tap-shape approximation moved during training, per activation, "
    "arch and depth",
}


def _grid(rows: int, cols: int, title: str, sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(3.3 * cols + 1.7, 6.5), 2.6 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def _rows(sweep: Sweep) -> list[tuple[str, dict[str, Any], str]]:
    return [(label, combo, when) for label, combo in sweep_other_combos(sweep) for when in WHEN]


def figure_gain_vs_theory(sweep: Sweep, theory: Theory) -> tuple[Figure, str]:
    """Measured gain against predicted gain, one point per block l ≥ 1 and run; a column per activation."""
    snap = at_first_and_last(theory, sweep)
    snap = snap[snap["compared"].astype(bool)]
    activations = list(dict.fromkeys(sweep.runs["activation"]))
    rows = _rows(sweep)
    fig, axes = _grid(len(rows), len(activations), FIGURES["gain_vs_theory"])
    colors = arch_colors(sweep.archs)
    low, high = AGREEMENT
    for i, (label, combo, when) in enumerate(rows):
        for j, activation in enumerate(activations):
            ax = axes[i, j]
            data = where(snap, when=when, activation=activation, **combo)
            ax.set_title(panel_title(activation, label, WHEN_LABEL[when]), fontsize=9)
            if data.empty:
                empty(ax, "no block compared")
                continue
            for arch, color in colors.items():
                for approx in (False, True):
                    part = data[(data["arch"] == arch) & (data["approx"].astype(bool) == approx)]
                    ax.scatter(
                        part["predicted_gain"],
                        part["measured_gain"],
                        s=14,
                        marker="o" if "plain" in arch else "s",
                        facecolors="none" if approx else color,
                        edgecolors=color,
                        linewidths=0.8,
                        alpha=0.8,
                    )
            values = data[["predicted_gain", "measured_gain"]].to_numpy(float)
            lo, hi = values.min() / 1.5, values.max() * 1.5
            line = np.array([lo, hi])
            ax.plot(line, line, color="0.2", lw=0.9)
            for f in (low, high):
                ax.plot(line, f * line, color="0.5", lw=0.7, ls=":")
            ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("predicted gain" if i == len(rows) - 1 else "")
            ax.set_ylabel("measured gain ‖∂L/∂hₗ₋₁‖ / ‖∂L/∂hₗ‖" if j == 0 else "")
    handles = [
        Line2D([], [], ls="", marker="o" if "plain" in a else "s", color=c, label=a) for a, c in colors.items()
    ] + [
        Line2D(
            [], [], ls="", marker="s", markerfacecolor="none", color="0.3", label="option A, stride 2 (E2 for E2ˢᶜ)"
        ),
        Line2D([], [], color="0.2", lw=0.9, label="measured = predicted"),
        Line2D([], [], color="0.5", lw=0.7, ls=":", label=f"× {low:g} and × {high:g}"),
    ]
    fig.legend(handles=handles, title="arch", loc="outside right upper", frameon=False)
    n_under = int(at_first_and_last(theory, sweep)["underflow"].sum()) if theory.made else 0
    caption = (
        "Each block's measured backward gain against the gain the mean-field theory predicts from the run's own "
        "weights and recorded σ′² (one point per block l ≥ 1 of every predicted run, both seeds), at each run's "
        "first recorded step and at its last (complete runs only); log axes, a column per activation. Solid "
        "line: measured = predicted; dotted: the 0.85–1.15 band. Hollow squares: residual blocks with a "
        "stride-2 option-A shortcut, whose prediction uses the block's E2 where the first C_in channels' σ′² "
        f"is needed (not recorded). Not drawn: {n_under} blocks whose input signal left float32's range "
        "(see the text). Numbers: `tables/gain_vs_theory.csv`."
    )
    return fig, caption


def _predicted_signal(theory: Theory, sweep: Sweep) -> pd.DataFrame:
    """Per run (first/last step) and block l: the measured ‖∂L/∂hₗ‖ and the prediction ‖∂L/∂h_L‖ · Π_{k>l} Gₖ."""
    snap = at_first_and_last(theory, sweep)
    parts = []
    for _, run in snap.groupby(["run_id", "when"], sort=False):
        run = run.sort_values("block_index")
        gains = run["predicted_gain"].to_numpy(float)
        top = run["signal_out"].to_numpy(float)[-1]
        # h_L is measured; going down, block l's input gets its output's value times the block's gain
        below = top * np.cumprod(gains[::-1])[::-1]  # predicted ‖∂L/∂h_{l-1}‖ for each block l of the run
        first = run.iloc[[0]].assign(block_index=run["block_index"].iloc[0] - 1)
        rows = pd.concat([first, run], ignore_index=True)
        rows["measured"] = np.concatenate([[run["signal_in"].iloc[0]], run["signal_out"].to_numpy(float)])
        rows["predicted"] = np.concatenate([below, [top]])
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else snap.assign(measured=[], predicted=[])


def figure_signal_vs_theory(sweep: Sweep, theory: Theory) -> tuple[Figure, str]:
    """The measured backward signal per block of plain nets, and the signal the predicted gains give from the top block."""
    data = _predicted_signal(theory, sweep)
    data = data[data["arch"].astype(str).str.contains("plain")] if len(data) else data
    activations = list(dict.fromkeys(sweep.runs["activation"]))
    rows = _rows(sweep)
    fig, axes = _grid(len(rows), len(activations), FIGURES["signal_vs_theory"])
    colors = depth_colors(sweep)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (label, combo, when) in enumerate(rows):
        for j, activation in enumerate(activations):
            ax = axes[i, j]
            part = where(data, when=when, activation=activation, **combo) if len(data) else data
            ax.set_title(panel_title(activation, label, WHEN_LABEL[when]), fontsize=9)
            if part.empty:
                empty(ax, "no plain run predicted")
                continue
            draw(ax, part, "block_index", "measured", "depth", colors, marks, band)
            draw(
                ax,
                part,
                "block_index",
                "predicted",
                "depth",
                colors,
                Marks(),
                False,
                style=lambda d: {"linestyle": ":"},
            )
            ax.set_xlabel("block index (0 = first block)" if i == len(rows) - 1 else "")
            ax.set_ylabel("‖∂L/∂h‖₂ of the block output" if j == 0 else "")
    extra = [
        Line2D([], [], color="0.3", lw=1.4, label="measured"),
        Line2D([], [], color="0.3", lw=1.4, ls=":", label="predicted from the top block"),
    ]
    legend(fig, "depth", colors, band, marks.kinds, extra=extra)
    caption = (
        "The backward signal ‖∂L/∂hₗ‖ at each block's output of the plain nets (solid, as in the figure of the "
        "backward signal per block) and what the predicted gains make of it (dotted): the top block's measured "
        "value times the product of the predicted gains of the blocks above l. The slope of the vanishing is "
        "predicted, not fitted. The weight-gradient norms are not predicted: ‖∂L/∂W‖ also scales with the "
        "forward activations' norm, which the recorder does not record. "
        f"{seeds} {marks.sentence('norms')}"
    )
    return fig, caption


def figure_ratio_over_steps(sweep: Sweep, theory: Theory) -> tuple[Figure, str]:
    """Median measured/predicted over each run's compared blocks at every recorded step; rows: arch, columns: activation."""
    data = ratio_over_steps(theory)
    activations = list(dict.fromkeys(sweep.runs["activation"]))
    rows = [(arch, label, combo) for label, combo in sweep_other_combos(sweep) for arch in sweep.archs]
    fig, axes = _grid(len(rows), len(activations), FIGURES["theory_ratio_over_steps"], sharey=True)
    colors = depth_colors(sweep)
    band, seeds = seed_note(sweep)
    marks = Marks()
    for i, (arch, label, combo) in enumerate(rows):
        for j, activation in enumerate(activations):
            ax = axes[i, j]
            part = where(data, arch=arch, activation=activation, **combo)
            ax.set_title(panel_title(arch, activation, label), fontsize=9)
            ax.axhspan(*AGREEMENT, color=BAND, zorder=0)
            ax.axhline(1.0, color="0.35", lw=0.9, ls=":")
            if part.empty:
                empty(ax, "no run predicted")
                continue
            draw(ax, part, "step", "median_ratio", "depth", colors, marks, band, style=lambda d, a=arch: arch_style(a))
            ax.set_yscale(
                "linear"
            )  # ratios near 1: a linear axis reads best            ax.set_xlabel("training step" if i == len(rows) - 1 else "")
            ax.set_ylabel("measured / predicted gain" if j == 0 else "")
    legend(fig, "depth", colors, band, marks.kinds, extra=[Patch(facecolor=BAND, label="0.85–1.15")])
    caption = (
        "How the agreement changes over training: the median over each run's blocks l ≥ 1 of measured/predicted "
        "gain at every recorded step (blocks whose input signal left float32's range left out). The prediction "
        "assumes weights independent of the signal; training correlates them. Between step 0 and the final "
        f"weights the tap shape is interpolated (`tables/theory_tap_shape.csv`). {seeds} {marks.sentence('ratios')}"
    )
    return fig, caption


DRAWN: list[tuple[str, Callable[[Sweep, Theory], tuple[Figure, str]]]] = [
    ("gain_vs_theory", figure_gain_vs_theory),
    ("signal_vs_theory", figure_signal_vs_theory),
    ("theory_ratio_over_steps", figure_ratio_over_steps),
]


# ---------------------------------------------------------------- the section


def theory_section(
    page: Any, sweep: Sweep, tables: dict[str, pd.DataFrame], first: int
) -> list[tuple[str, str, bytes, str]]:
    """Add "Theory and measurement" to ``page`` (report.page's page object); return its figures, numbered from ``first``."""
    page.heading(2, "Theory and measurement")
    theory = sweep_theory(sweep)
    if not theory.made:
        reasons = sorted(set(theory.left_out.values()))
        page.paragraph(
            "This section cannot be made for this sweep: no finished run can be predicted ("
            + ("; ".join(reasons) if reasons else "no finished run")
            + "). The prediction needs `weight_norm` and `act_deriv_sq` in the records (runs recorded before "
            "resgrad recorded them have neither: `resgrad sweep --force` reruns them) and nets without batch norm."
        )
        return []
    table = theory_table(theory, sweep)
    taps = tap_table(theory, sweep)
    tables["gain_vs_theory"] = table
    tables["theory_tap_shape"] = taps
    page.paragraph(
        "The vanishing-gradient argument as a prediction (docs/theory.md): for a backward signal that is white and "
        "independent of the layer, a conv passes back G² = A = (1/C_out)·Σ W²·c_dy·c_dx of its squared norm (its "
        "actual weights; c_d: the share of positions where tap d reads a real pixel, not padding), an activation "
        "E = mean σ′(z)² (`act_deriv_sq`). A plain block passes G² = E2·A2·E1·A1, a residual one "
        "G² = E2·(S + A2·E1·A1) with S = 1 for the identity, C_in/C_out for option A's stride-2 shortcut, A of the "
        "1×1 conv for option B. A = ‖W‖²·b/C_out at every recorded step from the recorded `weight_norm`; the border "
        "factor b from the tap energies of the weights at step 0 and after the last update, interpolated between."
    )
    page.paragraph(
        "Not compared: blocks whose input signal's root-mean-square element is below 1024 × float32's smallest "
        "normal number (the signal is then rounded or flushed to zero, and the measured gain is not the net's). "
        "Stride-2 option-A blocks are approximate: their shortcut needs σ′² of act2 over the first C_in channels, "
        "which is not recorded; the table's last column leaves them out."
    )
    for text in agreement_sentences(table, table_keys(sweep)):
        page.paragraph(text)
    for text in (exact_sentence(table), training_sentence(table, table_keys(sweep)), tap_sentence(taps)):
        if text:
            page.paragraph(text)
    if theory.left_out:
        page.paragraph(
            f"Left out: {len(theory.left_out)} runs ("
            + "; ".join(sorted({f"{why}" for why in theory.left_out.values()}))
            + ")."
        )
    figures = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for i, (name, make) in enumerate(DRAWN, first):
            fig, caption = make(sweep, theory)
            figures.append((name, FIGURES[name], png(fig), caption))
            page.heading(3, f"{i}. {FIGURES[name]}")
            page.figure(name, FIGURES[name], figures[-1][2], caption)
    page.paragraph("Measured / predicted gain per block l ≥ 1, over the compared blocks of every run of the group:")
    page.table(theory_display(table, table_keys(sweep)), "gain_vs_theory")
    return figures
