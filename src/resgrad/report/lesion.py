"""Tables and figures of a block-lesion study (``lesion.csv``, written by :mod:`resgrad.experiments.lesion`).

Read by ``resgrad lesion`` (its figures and printed table) and by ``resgrad report`` (the
lesion section of a sweep that holds ``lesion/lesion.csv``). Draws from the CSV alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from resgrad.report.plotting import arch_colors, arch_legend, arch_marked, mean_band, new_figure, png, where

COLUMNS = [
    "run_id",
    "arch",
    "depth",
    "width",
    "norm",
    "seed",
    "kind",
    "n_deleted",
    "draw",
    "block",
    "block_index",
    "downsampling",
    "test_acc",
    "intact_test_acc",
    "recorded_test_acc",
    "test_images",
]
COUNTED = "identity-shortcut blocks"  # the blocks "k deleted" counts: not the downsampling ones
FIGURES = {
    "lesion_single_block": "Test accuracy with one block deleted",
    "lesion_n_deleted": f"Test accuracy vs number of deleted {COUNTED}",
}
CHANCE = 10.0  # % test accuracy of a guess among the 10 digits
# lesion_table's columns (fractions, as in tables/lesion.csv) and their headings in % (lesion_display)
TABLE_HEADINGS = {
    "norm": "norm",
    "width": "width",
    "depth": "depth",
    "arch": "arch",
    "seeds": "seeds",
    "intact_acc": "intact (%)",
    "one_deleted_acc_mean": "1 identity-shortcut block deleted: mean over blocks (%)",
    "one_deleted_acc_worst": "1 identity-shortcut block deleted: worst block (%)",
    "one_downsampling_deleted_acc_mean": "1 downsampling block deleted: mean over blocks (%)",
    "most_deleted_k": "k (most identity-shortcut blocks deleted)",
    "most_deleted_acc_mean": "k random identity-shortcut blocks deleted: mean over sets (%)",
}


def read_lesion(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``lesion.csv`` as written by :func:`write_lesion`, with its column types."""
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}")
    return frame.astype({"draw": "Int64", "block_index": "Int64", "downsampling": "boolean", "block": "string"})


def counted_deletions(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows behind every "k blocks deleted" number: k = 0 the intact net, k = 1 each single identity-shortcut
    block, k >= 2 the random sets (of identity-shortcut blocks). Single downsampling blocks are left out."""
    return frame[(frame["kind"] != "single") | frame["downsampling"].eq(False)]


def lesion_curve(frame: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy against k, the identity-shortcut blocks deleted (see :func:`counted_deletions`).

    One row per norm, width, depth, arch and k: ``test_acc_mean`` (over blocks or sets, and seeds),
    ``test_acc_min``, ``test_acc_max`` (fractions) and ``evaluations``. The same numbers as
    ``lesion_n_deleted.png`` and the k = 1 and most-deleted columns of :func:`lesion_table`.
    """
    keys = ["norm", "width", "depth", "arch", "n_deleted"]
    stats = counted_deletions(frame).groupby(keys)["test_acc"].agg(["mean", "min", "max", "size"])
    return stats.set_axis(["test_acc_mean", "test_acc_min", "test_acc_max", "evaluations"], axis=1).reset_index()


def _combos(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One figure row per (norm, width) the frame holds, labelled when there is more than one."""
    combos = frame[["norm", "width"]].drop_duplicates().sort_values(["norm", "width"]).to_dict("records")
    label = len(combos) > 1
    return [(f"norm={c['norm']}, width={c['width']}" if label else "", c) for c in combos]


def _chance(ax: Any) -> Line2D:
    """The chance line on ``ax``; returns a legend handle for it."""
    style = {"color": "0.3", "lw": 0.8, "ls": "--"}
    ax.axhline(CHANCE, zorder=1, **style)
    return Line2D([], [], label=f"chance ({CHANCE:g} %)", **style)


def figure_single_block(frame: pd.DataFrame) -> tuple[Figure, str]:
    """Test accuracy (%) with one block deleted against the block's index; a panel per depth (and norm, width)."""
    frame = frame.assign(test_acc_pct=100 * frame["test_acc"])
    colors = arch_colors(frame["arch"])
    combos = _combos(frame)
    depths = sorted(frame["depth"].unique())
    n_seeds = frame.groupby(["arch", "depth", "norm", "width"])["seed"].nunique().max()
    fig, axes = new_figure(len(combos), len(depths), FIGURES["lesion_single_block"])
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(depths):
            ax = axes[i, j]
            part = where(frame, depth=depth, **combo)
            for arch, color in colors.items():
                single = where(part, arch=arch, kind="single")
                if single.empty:
                    continue
                mean_band(ax, single, "block_index", "test_acc_pct", color, arch)
                ax.axhline(where(part, arch=arch, kind="intact")["test_acc_pct"].mean(), color=color, lw=0.8, ls=":")
            for b in sorted(set(part.loc[part["downsampling"].eq(True), "block_index"])):
                ax.axvline(b, color="0.55", lw=0.8, ls="-.")
            chance = _chance(ax)
            ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
            ax.set_xlabel("deleted block (index from the input)" if i == len(combos) - 1 else "")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)" if j == 0 else "")
    axes[0, 0].set_ylim(0, 100)
    extra = [
        Line2D([], [], color="0.3", lw=0.8, ls=":", label="intact net (its colour)"),
        Line2D([], [], color="0.55", lw=0.8, ls="-.", label="downsampling block"),
        chance,
    ]
    arch_legend(fig, colors, "min–max over seeds" if n_seeds > 1 else None, extra)
    seeds = f"mean over {n_seeds} seeds, band: min–max" if n_seeds > 1 else "one seed"
    caption = (
        f"Test accuracy (%) with one block replaced by its shortcut, against the block's index ({seeds}), every "
        "block: dash-dotted verticals mark the downsampling blocks (their shortcut subsamples and widens). Dotted: "
        f"the intact net; dashed grey: chance ({CHANCE:g} %). Cf. Veit et al. (2016), Fig. 3."
    )
    return fig, caption


def figure_n_deleted(frame: pd.DataFrame) -> tuple[Figure, str]:
    """Test accuracy (%) against k, the identity-shortcut blocks deleted (:func:`lesion_curve`); a panel per depth."""
    curve = lesion_curve(frame)
    curve = curve.assign(**{c: 100 * curve[f"test_acc_{c}"] for c in ("mean", "min", "max")})
    colors = arch_colors(frame["arch"])
    combos = _combos(frame)
    depths = sorted(frame["depth"].unique())
    fig, axes = new_figure(len(combos), len(depths), FIGURES["lesion_n_deleted"])
    for i, (label, combo) in enumerate(combos):
        for j, depth in enumerate(depths):
            ax = axes[i, j]
            part = where(curve, depth=depth, **combo)
            for arch, color in colors.items():
                data = where(part, arch=arch).sort_values("n_deleted")
                if not data.empty:
                    xs = data["n_deleted"].to_numpy(dtype="float64")
                    ax.plot(xs, data["mean"], color=color, lw=1.6, markersize=3.5, **arch_marked(arch))
                    ax.fill_between(xs, data["min"], data["max"], color=color, alpha=0.2, lw=0)
            chance = _chance(ax)
            ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
            ax.set_xlabel(f"{COUNTED} deleted (k)" if i == len(combos) - 1 else "")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)" if j == 0 else "")
    axes[0, 0].set_ylim(0, 100)
    arch_legend(fig, colors, "min–max over blocks or sets, and seeds", [chance])
    caption = (
        f"Test accuracy (%) with k {COUNTED} deleted (each replaced by its shortcut; downsampling blocks are "
        "never among them): k = 0 the intact net, k = 1 each such block alone, k ≥ 2 random sets (the same sets "
        "for both twins). Lines: mean over blocks or sets and seeds, as in the lesion table; band: min–max. "
        f"Dashed grey: chance ({CHANCE:g} %). Numbers: `resgrad.report.lesion.lesion_curve`. "
        "Cf. Veit et al. (2016), Fig. 5a."
    )
    return fig, caption


def lesion_figures(frame: pd.DataFrame) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two lesion figures."""
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        for name, make in (("lesion_single_block", figure_single_block), ("lesion_n_deleted", figure_n_deleted)):
            fig, caption = make(frame)
            out[name] = (FIGURES[name], png(fig), caption)
    return out


def lesion_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per norm, width, depth and arch, test accuracies as fractions (columns: :data:`TABLE_HEADINGS`).

    ``intact_acc``: mean over seeds. ``one_deleted_acc_mean``: one identity-shortcut block deleted, mean over
    those blocks and seeds (k = 1 of :func:`lesion_curve`); ``one_deleted_acc_worst``: the worst such block per
    seed, mean over seeds; ``one_downsampling_deleted_acc_mean``: one downsampling block deleted, mean over those
    blocks and seeds; ``most_deleted_k``: the most identity-shortcut blocks deleted (k >= 2, random sets) and
    ``most_deleted_acc_mean`` the mean over those sets and seeds.
    """
    rows = []
    for keys, g in frame.groupby(["norm", "width", "depth", "arch"], sort=True):
        counted = counted_deletions(g)
        one = counted[counted["n_deleted"] == 1]
        down = g[(g["kind"] == "single") & g["downsampling"].eq(True)]
        k = int(counted["n_deleted"].max()) if (counted["n_deleted"] >= 2).any() else None
        rows.append(
            {
                **dict(zip(["norm", "width", "depth", "arch"], keys)),
                "seeds": g["seed"].nunique(),
                "intact_acc": g.loc[g["kind"] == "intact", "test_acc"].mean(),
                "one_deleted_acc_mean": one["test_acc"].mean(),
                "one_deleted_acc_worst": one.groupby("seed")["test_acc"].min().mean(),
                "one_downsampling_deleted_acc_mean": down["test_acc"].mean(),
                "most_deleted_k": k,
                "most_deleted_acc_mean": counted.loc[counted["n_deleted"] == k, "test_acc"].mean() if k else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_HEADINGS)).astype({"most_deleted_k": "Int64"})


def lesion_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`lesion_table` as text under its headings: accuracies in % with two decimals, k a whole number,
    missing values empty."""

    def cell(v: object, column: str) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return ""
        if column.endswith("_acc") or "_acc_" in column:
            return f"{100 * float(v):.2f}"  # type: ignore[arg-type]
        return str(v)

    shown = table.apply(lambda col: col.map(lambda v: cell(v, col.name)))
    return shown.rename(columns=TABLE_HEADINGS)
