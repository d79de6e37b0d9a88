"""Tables and figures of a block-lesion study (``lesion.csv``, written by :mod:`resgrad.experiments.lesion`).

Read by ``resgrad lesion`` (its figures and printed table) and by ``resgrad report`` (the
lesion section of a sweep that holds ``lesion/lesion.csv``). Draws from the CSV alone.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from resgrad.report.plotting import arch_colors, arch_legend, mean_band, new_figure, png, where

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
FIGURES = {
    "lesion_single_block": "Test accuracy with one block deleted",
    "lesion_n_deleted": "Test accuracy vs number of deleted blocks",
}


def read_lesion(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``lesion.csv`` as written by :func:`write_lesion`, with its column types."""
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}")
    return frame.astype({"draw": "Int64", "block_index": "Int64", "downsampling": "boolean", "block": "string"})


def _combos(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One figure row per (norm, width) the frame holds, labelled when there is more than one."""
    combos = frame[["norm", "width"]].drop_duplicates().sort_values(["norm", "width"]).to_dict("records")
    label = len(combos) > 1
    return [(f"norm={c['norm']}, width={c['width']}" if label else "", c) for c in combos]


def lesion_figures(frame: pd.DataFrame) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two lesion figures."""
    frame = frame.assign(test_acc_pct=100 * frame["test_acc"], intact_pct=100 * frame["intact_test_acc"])
    colors = arch_colors(frame["arch"])
    combos = _combos(frame)
    depths = sorted(frame["depth"].unique())
    n_seeds = frame.groupby(["arch", "depth", "norm", "width"])["seed"].nunique().max()
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
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
                    ax.axhline(
                        where(part, arch=arch, kind="intact")["test_acc_pct"].mean(), color=color, lw=0.8, ls=":"
                    )
                for b in sorted(set(part.loc[part["downsampling"].eq(True), "block_index"])):
                    ax.axvline(b, color="0.55", lw=0.8, ls="-.")
                ax.axhline(10, color="0.3", lw=0.6)
                ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
                ax.set_xlabel("deleted block (index from the input)" if i == len(combos) - 1 else "")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel("test accuracy (%)" if j == 0 else "")
        axes[0, 0].set_ylim(0, 100)
        arch_legend(fig, colors, "min–max over seeds" if n_seeds > 1 else None)
        seeds = f"mean over {n_seeds} seeds, band: min–max" if n_seeds > 1 else "one seed"
        out["lesion_single_block"] = (
            FIGURES["lesion_single_block"],
            png(fig),
            f"Test accuracy with one block replaced by its shortcut, against the block's index ({seeds}). Dotted: "
            "the intact net; dash-dotted verticals: downsampling blocks (their shortcut subsamples and widens); "
            "grey line: chance (10 %). Cf. Veit et al. (2016), Fig. 3.",
        )

        fig, axes = new_figure(len(combos), len(depths), FIGURES["lesion_n_deleted"])
        for i, (label, combo) in enumerate(combos):
            for j, depth in enumerate(depths):
                ax = axes[i, j]
                part = where(frame, depth=depth, **combo)
                # k = 0: intact; k = 1: every single non-downsampling block; k >= 2: the random sets.
                part = part[(part["kind"] != "single") | part["downsampling"].eq(False)]
                for arch, color in colors.items():
                    data = where(part, arch=arch)
                    if not data.empty:
                        mean_band(ax, data, "n_deleted", "test_acc_pct", color, arch)
                ax.axhline(10, color="0.3", lw=0.6)
                ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
                ax.set_xlabel("blocks deleted" if i == len(combos) - 1 else "")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel("test accuracy (%)" if j == 0 else "")
        axes[0, 0].set_ylim(0, 100)
        arch_legend(fig, colors, "min–max over sets and seeds")
        out["lesion_n_deleted"] = (
            FIGURES["lesion_n_deleted"],
            png(fig),
            "Test accuracy with k non-downsampling blocks deleted: k = 0 the intact net, k = 1 each single block, "
            "k ≥ 2 random sets (the same sets for both twins). Lines: mean over sets and seeds; band: min–max. "
            "Grey line: chance (10 %). Cf. Veit et al. (2016), Fig. 5a.",
        )
    return out


def lesion_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per norm, width, depth and arch, means over seeds (%): intact; one block deleted (mean over the
    non-downsampling blocks, the worst of them, mean over the downsampling ones); the most blocks deleted."""
    rows = []
    for keys, g in frame.groupby(["norm", "width", "depth", "arch"], sort=True):
        single = g[g["kind"] == "single"]
        plain_single = single[single["downsampling"].eq(False)]
        down = single[single["downsampling"].eq(True)]
        rand = g[g["kind"] == "random"]
        k = int(rand["n_deleted"].max()) if len(rand) else None
        rows.append(
            {
                **dict(zip(["norm", "width", "depth", "arch"], keys)),
                "seeds": g["seed"].nunique(),
                "intact": 100 * g.loc[g["kind"] == "intact", "test_acc"].mean(),
                "one block deleted, mean": 100 * plain_single["test_acc"].mean(),
                "one block deleted, worst": 100 * plain_single.groupby("seed")["test_acc"].min().mean(),
                "downsampling block deleted, mean": 100 * down["test_acc"].mean(),
                "most deleted (k)": k,
                "k deleted, mean": 100 * rand.loc[rand["n_deleted"] == k, "test_acc"].mean() if k else np.nan,
            }
        )
    return pd.DataFrame(rows)


def lesion_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`lesion_table` as text: accuracies with two decimals, missing values empty."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return table.apply(lambda col: col.map(cell))
