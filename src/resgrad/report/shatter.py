"""Figures of a shattered-gradients study (``shatter.csv``, written by :mod:`resgrad.experiments.shatter`).

Draws from the CSV alone: no net is built or run here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resgrad.report.plotting import arch_colors, arch_legend, arch_marked, empty, mean_band, new_figure, png, where

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
NET_KEYS = ["arch", "depth", "width", "norm", "activation", "init", "seed", "state", "run_id"]  # one net
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


def unmeasured(frame: pd.DataFrame) -> list[str]:
    """The nets with no correlation at any distance (their input gradient constant, e.g. zero, at every image)."""
    keys = [k for k in NET_KEYS if k in frame.columns]
    none = frame.groupby(keys, dropna=False)["correlation"].apply(lambda c: c.isna().all())
    out = []
    for values in none[none].index:
        net = dict(zip(keys, values))
        name = f"{net['arch']}-d{net['depth']}-w{net['width']} (norm {net['norm']}, init {net['init']}, seed "
        out.append(name + f"{net['seed']}, {'trained' if net['state'] == 'trained' else 'at init'})")
    return out


def _not_drawn(frame: pd.DataFrame) -> str:
    """The caption's sentence on what could not be drawn; empty when everything was."""
    nets = unmeasured(frame)
    some = int(frame["correlation"].isna().sum())
    if not some:
        return ""
    text = f" Not drawn: {some} of {len(frame)} net × distance points have no correlation"
    if nets:
        text += f"; {len(nets)} net(s) none at any distance, their input gradient being constant (e.g. zero) at "
        text += "every pixel of every image: " + "; ".join(nets)
    return text + " (NaN in shatter.csv)."


def _x_limits(ax: Any, distances: list[float], log_x: bool) -> None:
    """The distance axis set from the grid itself, so that a panel with nothing drawn still has one."""
    lo, hi = min(distances), max(distances)
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.5, hi * 1.5)
    elif hi > lo:
        ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))


def figure_vs_distance(frame: pd.DataFrame) -> tuple[Figure, str]:
    """Correlation against distance t: a panel per arch and state (and option), a line per depth."""
    distances = sorted(frame["distance"].unique())
    log_x = distances[0] > 0
    panels = _panels(frame)
    archs = list(dict.fromkeys(frame["arch"]))
    depths = sorted(frame["depth"].unique())
    depth_colors = dict(zip(depths, sns.color_palette("viridis_r", len(depths))))
    measured = frame[frame["correlation"].notna()]
    fig, axes = new_figure(len(panels), len(archs), FIGURES["shatter_correlation_vs_distance"])
    for i, (label, key) in enumerate(panels):
        for j, arch in enumerate(archs):
            ax = axes[i, j]
            part = where(measured, arch=arch, **key)
            for depth, color in depth_colors.items():
                data = where(part, depth=depth)
                if len(data):
                    stats = data.groupby("distance")["correlation"].agg(["mean", "min", "max"])
                    ax.plot(stats.index, stats["mean"], color=color, lw=1.5, **arch_marked(arch), markersize=3)
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, lw=0)
            if part.empty:
                empty(ax, "no correlation: the input gradient\nis constant (e.g. zero)")
            _x_limits(ax, distances, log_x)
            ax.axhline(0, color="0.3", lw=0.6)
            ax.set_title(f"{arch} · {label}", fontsize=9)
            ax.set_xlabel("distance t from x (||d|| = 1)" if i == len(panels) - 1 else "")
            ax.set_ylabel("correlation of ∂logit/∂x" if j == 0 else "")
    axes[0, 0].set_ylim(-0.1, 1.02)
    handles = [Line2D([], [], color=c, lw=1.5, label=str(d)) for d, c in depth_colors.items()]
    fig.legend(handles=handles, title="depth", loc="outside right upper", frameon=False)
    caption = (
        "Pearson correlation over pixels between the input gradient of the true class's logit at a test "
        "image x and at x + t·d (d a random unit direction), mean over images; lines: mean over seeds, "
        "band: min–max over seeds. 1: the gradient does not change; 0: unrelated (shattered). "
        "Cf. Balduzzi et al. (2017), Fig. 1." + _not_drawn(frame)
    )
    return fig, caption


def figure_vs_depth(frame: pd.DataFrame, at: float) -> tuple[Figure, str]:
    """Correlation at distance ``at`` against depth: a panel per state (and option), a line per arch."""
    panels = _panels(frame)
    archs = list(dict.fromkeys(frame["arch"]))
    measured = frame[frame["correlation"].notna()]
    fig, axes = new_figure(1, len(panels), f"{FIGURES['shatter_correlation_vs_depth']} (t = {at:g})")
    colors = arch_colors(archs)
    for j, (label, key) in enumerate(panels):
        ax = axes[0, j]
        part = where(measured, distance=at, **key)
        for arch, color in colors.items():
            data = where(part, arch=arch)
            if len(data):
                mean_band(ax, data, "depth", "correlation", color, arch)
        if part.empty:
            empty(ax, "no correlation: the input gradient\nis constant (e.g. zero)")
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xticks(sorted(where(frame, **key)["depth"].unique()))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel(f"correlation at t = {at:g}" if j == 0 else "")
    axes[0, 0].set_ylim(-0.1, 1.02)
    arch_legend(fig, colors, "min–max over seeds")
    caption = (
        f"Correlation between the input gradients at x and at x + t·d for t = {at:g}, against depth; "
        "mean over seeds (each a mean over images), band: min–max over seeds."
        + _not_drawn(frame[frame["distance"] == at])
    )
    return fig, caption


def shatter_figures(frame: pd.DataFrame, at_distance: float | None = None) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two shatter figures."""
    distances = sorted(frame["distance"].unique())
    at = at_distance if at_distance in distances else distances[len(distances) // 2]
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for name, (fig, caption) in (
            ("shatter_correlation_vs_distance", figure_vs_distance(frame)),
            ("shatter_correlation_vs_depth", figure_vs_depth(frame, at)),
        ):
            out[name] = (FIGURES[name], png(fig), caption)
    return out
