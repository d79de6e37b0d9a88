"""Figures of a shattered-gradients study (``shatter.csv``, written by :mod:`resgrad.experiments.shatter`).

Draws from the CSV alone: no net is built or run here.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from resgrad.report.plotting import arch_colors, arch_legend, arch_marked, mean_band, new_figure, png, where

COLUMNS = [
    "arch",
    "depth",
    "width",
    "norm",
    "activation",
    "init",
    "seed",
    "state",
    "run_id",
    "distance",
    "correlation",
    "correlation_std",
    "images",
]
FIGURES = {
    "shatter_correlation_vs_distance": "Gradient correlation vs distance",
    "shatter_correlation_vs_depth": "Gradient correlation vs depth",
}


def _panels(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One panel row (or column) per state and per (norm, width, init) combination, labelled."""
    options = ["norm", "width", "init"]
    keys = frame[["state", *options]].drop_duplicates()
    keys = keys.assign(o=keys["state"].map({"init": 0, "trained": 1})).sort_values(["o", *options])
    varied = [o for o in options if keys[o].nunique() > 1]
    out = []
    for k in keys.drop(columns="o").to_dict("records"):
        name = "at init" if k["state"] == "init" else "trained"
        out.append((" · ".join([name, *(f"{o}={k[o]}" for o in varied)]), k))
    return out


def shatter_figures(frame: pd.DataFrame, at_distance: float | None = None) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two shatter figures."""
    distances = sorted(frame["distance"].unique())
    at = at_distance if at_distance in distances else distances[len(distances) // 2]
    log_x = distances[0] > 0
    panels = _panels(frame)
    archs = list(dict.fromkeys(frame["arch"]))
    depths = sorted(frame["depth"].unique())
    depth_colors = dict(zip(depths, sns.color_palette("viridis_r", len(depths))))
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        fig, axes = new_figure(len(panels), len(archs), FIGURES["shatter_correlation_vs_distance"])
        for i, (label, key) in enumerate(panels):
            for j, arch in enumerate(archs):
                ax = axes[i, j]
                part = where(frame, arch=arch, **key)
                for depth, color in depth_colors.items():
                    data = where(part, depth=depth)
                    if len(data):
                        stats = data.groupby("distance")["correlation"].agg(["mean", "min", "max"])
                        ax.plot(stats.index, stats["mean"], color=color, lw=1.5, **arch_marked(arch), markersize=3)
                        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, lw=0)
                ax.set_xscale("log" if log_x else "linear")
                ax.axhline(0, color="0.3", lw=0.6)
                ax.set_title(f"{arch} · {label}", fontsize=9)
                ax.set_xlabel("distance t from x (||d|| = 1)" if i == len(panels) - 1 else "")
                ax.set_ylabel("correlation of ∂logit/∂x" if j == 0 else "")
        axes[0, 0].set_ylim(-0.1, 1.02)
        handles = [Line2D([], [], color=c, lw=1.5, label=str(d)) for d, c in depth_colors.items()]
        fig.legend(handles=handles, title="depth", loc="outside right upper", frameon=False)
        out["shatter_correlation_vs_distance"] = (
            FIGURES["shatter_correlation_vs_distance"],
            png(fig),
            "Pearson correlation over pixels between the input gradient of the true class's logit at a test "
            "image x and at x + t·d (d a random unit direction), mean over images; lines: mean over seeds, "
            "band: min–max over seeds. 1: the gradient does not change; 0: unrelated (shattered). "
            "Cf. Balduzzi et al. (2017), Fig. 1.",
        )

        fig, axes = new_figure(1, len(panels), f"{FIGURES['shatter_correlation_vs_depth']} (t = {at:g})")
        colors = arch_colors(archs)
        for j, (label, key) in enumerate(panels):
            ax = axes[0, j]
            part = where(frame, distance=at, **key)
            for arch, color in colors.items():
                data = where(part, arch=arch)
                if len(data):
                    mean_band(ax, data, "depth", "correlation", color, arch)
            ax.axhline(0, color="0.3", lw=0.6)
            ax.set_xticks(sorted(part["depth"].unique()))
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("depth (weighted layers)")
            ax.set_ylabel(f"correlation at t = {at:g}" if j == 0 else "")
        axes[0, 0].set_ylim(-0.1, 1.02)
        arch_legend(fig, colors, "min–max over seeds")
        out["shatter_correlation_vs_depth"] = (
            FIGURES["shatter_correlation_vs_depth"],
            png(fig),
            f"Correlation between the input gradients at x and at x + t·d for t = {at:g}, against depth; "
            "mean over seeds (each a mean over images), band: min–max over seeds.",
        )
    return out
