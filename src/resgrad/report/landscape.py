"""Tables and figures of a loss-landscape study (``landscape.csv`` and ``curvature.csv``, written by
:mod:`resgrad.experiments.landscape`).

Read by ``resgrad landscape`` (its figures and printed table) and by ``resgrad report``
(:func:`landscape_section`, for a sweep that holds ``landscape/landscape.csv``). Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm

from resgrad.report.plotting import arch_colors, arch_legend, mean_band, new_figure, png, where

COLUMNS = ["run_id", "arch", "depth", "width", "norm", "seed", "kind", "alpha", "beta", "loss", "accuracy"]
CURVATURE_COLUMNS = [
    "run_id",
    "arch",
    "depth",
    "width",
    "norm",
    "seed",
    "lambda_max",
    "lambda_min",
    "abs_min_over_max",
    "lambda_max_error",
    "lambda_min_error",
    "hessian_products",
    "weights",
    "loss",
    "accuracy",
    "images",
    "seconds",
]
FIGURES = {
    "landscape_2d": "Loss surfaces around the trained weights",
    "landscape_1d": "Loss along one filter-normalised direction",
    "landscape_init_final": "Loss on the straight line from init to the trained weights",
}
# A climb of the loss along the init-final line smaller than this fraction of the loss where it ends is float32
# rounding (each loss is a float32 mean over the images), not a barrier: the line still counts as monotone.
FLAT = 1e-5
LEVELS = 30  # log-spaced contour levels per figure
NETS = ["norm", "width", "depth"]


def _read(path: str | os.PathLike[str], columns: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}")
    return frame


def read_landscape(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``landscape.csv`` as :func:`~resgrad.experiments.landscape.write_landscape` writes it."""
    return _read(path, COLUMNS)


def read_curvature(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``curvature.csv`` as :func:`~resgrad.experiments.landscape.write_landscape` writes it."""
    return _read(path, CURVATURE_COLUMNS)


# ---------------------------------------------------------------- tables


def path_monotone(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: the barrier on the init-final line and whether the line is monotone.

    The barrier is the largest climb of the loss above its lowest value earlier on the line,
    max over t of loss(t) − min over s ≤ t of loss(s) (0 for a line that only falls); the line is
    monotone when no climb exceeds :data:`FLAT` of the loss where it ends, and every loss is finite.
    """
    rows = []
    for run_id, g in frame[frame["kind"] == "init-final"].groupby("run_id", sort=False):
        loss = g.sort_values("alpha")["loss"].to_numpy(dtype="float64")
        climb = loss - np.minimum.accumulate(loss) if len(loss) else loss
        finite = bool(np.isfinite(loss).all())
        monotone = finite and bool((climb <= FLAT * np.abs(loss)).all())
        rows.append(dict(run_id=run_id, path_barrier=float(np.max(climb, initial=0.0)), monotone=monotone))
    return pd.DataFrame(rows, columns=["run_id", "path_barrier", "monotone"])


def landscape_table(frame: pd.DataFrame, curvature: pd.DataFrame) -> pd.DataFrame:
    """One row per run (twin): the loss and accuracy at its trained weights, λ_max, λ_min, |λ_min/λ_max|, and
    whether the loss falls monotonically along the straight line from its init (and the barrier if not)."""
    table = curvature.merge(path_monotone(frame), on="run_id", how="left")
    table = table.sort_values([*NETS, "arch", "seed"], kind="stable")
    table = table.assign(accuracy=100 * table["accuracy"])
    keep = [*NETS, "arch", "seed", "loss", "accuracy", "lambda_max", "lambda_min", "abs_min_over_max"]
    return table[[*keep, "monotone", "path_barrier", "hessian_products"]].reset_index(drop=True)


def landscape_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`landscape_table` as text: three significant digits, accuracy in % with two decimals."""
    names = {
        "accuracy": "accuracy (%)",
        "lambda_max": "λ_max",
        "lambda_min": "λ_min",
        "abs_min_over_max": "|λ_min/λ_max|",
        "monotone": "init→final monotone",
        "path_barrier": "barrier (loss)",
        "hessian_products": "Hessian-vector products",
    }

    def cell(column: str, v: object) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if column == "accuracy":
            return f"{v:.2f}"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return table.apply(lambda col: col.map(lambda v: cell(col.name, v))).rename(columns=names)


# ---------------------------------------------------------------- figures


def _nets(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One panel (column or row) per (norm, width, depth), labelled with what varies and the depth."""
    keys = frame[NETS].drop_duplicates().sort_values(NETS).to_dict("records")
    varied = [k for k in ("norm", "width") if frame[k].nunique() > 1]
    return [(" · ".join([f"depth {k['depth']}", *(f"{v}={k[v]}" for v in varied)]), k) for k in keys]


def _contours(frame: pd.DataFrame) -> tuple[str, bytes, str]:
    surface = frame[frame["kind"] == "2d"]
    archs = list(dict.fromkeys(surface["arch"]))
    rows = [
        (f"{label} · seed {seed}", {**key, "seed": seed})
        for label, key in _nets(surface)
        for seed in sorted(where(surface, **key)["seed"].unique())
    ]
    loss = surface["loss"].to_numpy(dtype="float64")
    good = loss[np.isfinite(loss) & (loss > 0)]
    lo, hi = (good.min(), good.max()) if len(good) else (1e-3, 1.0)
    hi = max(hi, lo * 1.01)
    levels = np.geomspace(lo, hi, LEVELS)
    norm = LogNorm(lo, hi)
    bad = 0
    fig, axes = new_figure(len(rows), len(archs), FIGURES["landscape_2d"], sharey=True)
    for i, (label, key) in enumerate(rows):
        for j, arch in enumerate(archs):
            ax = axes[i, j]
            part = where(surface, arch=arch, **key)
            if part.empty:
                ax.set_axis_off()
                continue
            grid = part.pivot_table(index="beta", columns="alpha", values="loss", aggfunc="mean", dropna=False)
            z = grid.to_numpy(dtype="float64")
            finite = np.isfinite(z) & (z > 0)
            bad += int((~finite).sum())
            x, y = grid.columns.to_numpy(dtype="float64"), grid.index.to_numpy(dtype="float64")
            ax.contour(x, y, np.ma.masked_where(~finite, z), levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
            ax.plot([0], [0], marker="*", color="black", markersize=7, ls="")
            ax.set_aspect("equal")
            ax.set_title(f"{arch} · {label}", fontsize=9)
            ax.set_xlabel("α (δ)" if i == len(rows) - 1 else "")
            ax.set_ylabel("β (η)" if j == 0 else "")
    fig.colorbar(
        ScalarMappable(norm=norm, cmap="viridis"),
        ax=axes,
        label="training loss (log scale)",
        shrink=0.5,
    )
    note = f" {bad} points with a non-finite or zero loss are left blank." if bad else ""
    caption = (
        "Contours of the training loss at θ + αδ + βη around the trained weights θ (★), δ and η random "
        "filter-normalised directions, the same random draws for plain and residual; "
        f"{LEVELS} log-spaced levels from {lo:.3g} to {hi:.3g}, the same in every panel. Cf. Li et al. (2018), "
        f"Fig. 5: with skip connections a smooth convex bowl, without them chaotic at depth 56.{note}"
    )
    return FIGURES["landscape_2d"], png(fig), caption


def _lines(frame: pd.DataFrame, kind: str, name: str, xlabel: str) -> tuple[str, bytes]:
    part_all = frame[frame["kind"] == kind].assign(accuracy_pct=100 * frame["accuracy"])
    colors = arch_colors(part_all["arch"])
    nets = _nets(part_all)
    fig, axes = new_figure(2, len(nets), FIGURES[name], sharey="row")
    for j, (label, key) in enumerate(nets):
        part = where(part_all, **key)
        for arch, color in colors.items():
            data = where(part, arch=arch)
            data = data[np.isfinite(data["loss"]) & (data["loss"] > 0)]
            if len(data):
                mean_band(axes[0, j], data, "alpha", "loss", color, arch)
                mean_band(axes[1, j], data, "alpha", "accuracy_pct", color, arch)
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(label, fontsize=9)
        axes[1, j].set_xlabel(xlabel)
        axes[1, j].axhline(10, color="0.3", lw=0.6)
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("training accuracy (%)")
    axes[1, 0].set_ylim(0, 100)
    arch_legend(fig, colors, "min–max over seeds")
    return FIGURES[name], png(fig)


def landscape_figures(frame: pd.DataFrame) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the three landscape figures."""
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        out["landscape_2d"] = _contours(frame)
        heading, data = _lines(frame, "1d", "landscape_1d", "α (filter-normalised direction δ)")
        out["landscape_1d"] = (
            heading,
            data,
            "Training loss (log scale) and accuracy at θ + αδ, the 2D figure's first direction at twice its "
            "resolution; lines: mean over seeds, band: min–max. Grey line: chance (10 %).",
        )
        heading, data = _lines(frame, "init-final", "landscape_init_final", "t (0: init, 1: trained)")
        out["landscape_init_final"] = (
            heading,
            data,
            "Training loss (log scale) and accuracy at (1 − t)·θ₀ + t·θ, from each run's initial state θ₀ "
            "(rebuilt from its seed) to its trained state θ; every weight, bias and batch-norm statistic "
            "moves. Cf. Goodfellow, Vinyals & Saxe (2015): a monotone fall means no barrier on the "
            "straight path. Lines: mean over seeds, band: min–max. Grey line: chance (10 %).",
        )
    return out


# ---------------------------------------------------------------- the report's section


def landscape_section(
    page: Any, sweep_dir: Path, tables: dict[str, pd.DataFrame], first: int
) -> list[tuple[str, str, bytes, str]]:
    """Add "Loss landscape" to ``page`` (report.page's page object) when ``sweep_dir/landscape/landscape.csv``
    exists (``resgrad landscape``); return its figures, numbered from ``first``."""
    folder = sweep_dir / "landscape"
    if not (folder / "landscape.csv").is_file():
        return []
    page.heading(2, "Loss landscape")
    try:
        frame, curvature = read_landscape(folder / "landscape.csv"), read_curvature(folder / "curvature.csv")
    except (OSError, ValueError, KeyError) as exc:
        page.paragraph(f"`landscape/` cannot be read ({exc}); rerun `resgrad landscape {sweep_dir}`.")
        return []
    table = landscape_table(frame, curvature)
    tables["landscape"] = table
    page.paragraph(
        f"The training loss of {frame['run_id'].nunique()} trained runs around their weights and on the straight "
        "line from their init, from `landscape/` (`resgrad landscape`), on the first "
        f"{int(curvature['images'].max()):,} training images, batch norm in eval mode. One row per run: the loss "
        "and accuracy at the trained weights; λ_max and λ_min of the loss's Hessian with respect to the conv and "
        "linear weights there (Lanczos; |λ_min/λ_max| near 0: locally convex, Li et al. 2018); whether the loss "
        "falls monotonically from init (Goodfellow et al. 2015) and, if not, the barrier: the largest climb of "
        "the loss above its lowest value earlier on that line."
    )
    page.table(landscape_display(table), "landscape")
    figures = [
        (name, heading, png_bytes, caption) for name, (heading, png_bytes, caption) in landscape_figures(frame).items()
    ]
    for i, (name, heading, png_bytes, caption) in enumerate(figures, first):
        page.heading(3, f"{i}. {heading}")
        page.figure(name, heading, png_bytes, caption)
    return figures
