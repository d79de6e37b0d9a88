"""Drawing helpers shared by the report's figures (:mod:`resgrad.report.figures`, :mod:`resgrad.report.figures_grad`).

Norms are drawn on a log axis; a value that axis cannot show (zero, inf, NaN) is
marked at the axis edge by :func:`draw` and counted in :class:`Marks` for the
caption, never dropped silently. Colours: one per depth (viridis) or per arch
(:data:`ARCH_COLORS`); plain dashed, residual solid.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from resgrad.report.sweepdata import Sweep

ARCH_COLORS = {"plain": "#c0392b", "residual": "#2471a3", "seed-plain": "#e67e22", "seed-residual": "#17a589"}
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
class Marks:
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
        return (
            f"{what.capitalize()} a log axis cannot show are marked per run at the axis edge and left out of "
            f"the mean line: {counts}."
        )


def _bad_kind(values: np.ndarray) -> np.ndarray:
    """'nan', 'inf' (+inf) or 'zero' (zero, negative or -inf) for each value that is not finite and positive."""
    return np.where(np.isnan(values), "nan", np.where(values > 0, "inf", "zero"))


def draw(
    ax: Any,
    data: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    colors: dict[Any, Any],
    marks: Marks,
    band: bool,
    style: Callable[[Any], dict[str, str]] | None = None,
) -> None:
    """Mean line over seeds per hue level (band: min–max), on a log y axis; edge markers for the rest.

    ``style``: extra line properties per hue level (e.g. :func:`arch_style`); the first level is then drawn last,
    on top.
    """
    values = data[y].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values > 0)
    good = data[ok]
    for level, color in reversed(colors.items()) if style else colors.items():
        part = good[good[hue] == level]
        if len(part):
            sns.lineplot(
                data=part,
                x=x,
                y=y,
                ax=ax,
                color=color,
                estimator="mean",
                errorbar=("pi", 100) if band else None,
                legend=False,
                linewidth=1.4,
                **(style(level) if style else {}),
            )
    ax.set_yscale("log")
    bad = data[~ok]
    if len(bad):
        kinds = _bad_kind(bad[y].to_numpy(dtype="float64"))
        for kind, (marker, edge, _) in _BAD.items():
            sel = bad[kinds == kind]
            if len(sel):
                marks.add(kind, len(sel))
                ax.scatter(
                    sel[x].to_numpy(dtype="float64"),
                    np.full(len(sel), edge),
                    marker=marker,
                    s=42,
                    c=[colors[h] for h in sel[hue]],
                    edgecolors="black",
                    linewidths=0.6,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    zorder=5,
                )


def legend(
    fig: Figure,
    title: str,
    colors: dict[Any, Any],
    band: bool,
    kinds: Sequence[str] = (),
    style: Callable[[Any], dict[str, str]] | None = None,
    extra: Sequence[Any] = (),
) -> None:
    """One legend for the whole figure: a line per hue level (drawn with ``style``), the band, the edge markers
    used, and ``extra`` handles."""
    handles: list[Any] = [
        Line2D([], [], color=c, lw=2, label=str(level), **(style(level) if style else {}))
        for level, c in colors.items()
    ]
    if band:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label="min–max over seeds"))
    for kind in kinds:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=_BAD[kind][0],
                markersize=7,
                color="0.6",
                markeredgecolor="black",
                label=_BAD_LEGEND[kind],
            )
        )
    handles.extend(extra)
    fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)


def where(frame: pd.DataFrame, **values: Any) -> pd.DataFrame:
    """The rows of ``frame`` whose columns equal ``values``."""
    mask = np.ones(len(frame), dtype=bool)
    for k, v in values.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def panels(nrows: int, ncols: int, title: str, sharey: bool = True) -> tuple[Figure, np.ndarray]:
    # at least 6.5 in wide: one panel beside the legend would leave the title no room
    fig = Figure(figsize=(max(3.3 * ncols + 1.7, 6.5), 2.5 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def empty(ax: Any, text: str = "no finished run") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def panel_title(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def depth_colors(sweep: Sweep) -> dict[int, Any]:
    depths = sweep.depths
    return dict(zip(depths, sns.color_palette("viridis_r" if len(depths) > 1 else "viridis", len(depths))))


def arch_colors(archs: Iterable[str]) -> dict[str, Any]:
    """A colour per arch, in first-seen order: :data:`ARCH_COLORS`, then tab10's."""
    spare = iter(sns.color_palette("tab10"))
    return {a: ARCH_COLORS.get(a) or next(spare) for a in dict.fromkeys(archs)}


def arch_style(arch: str) -> dict[str, str]:
    """Plain dashed, residual solid: where their lines coincide, both stay visible."""
    return {"linestyle": "--" if "plain" in arch else "-"}


def arch_marked(arch: str) -> dict[str, str]:
    """:func:`arch_style` with a marker per point: circles for plain, squares for residual."""
    return {**arch_style(arch), "marker": "o" if "plain" in arch else "s"}


def seed_note(sweep: Sweep) -> tuple[bool, str]:
    """(draw a band?, the caption's sentence about seeds)."""
    n = sweep.runs["seed"].nunique()
    if n > 1:
        return True, f"Lines: mean over {n} seeds; band: min–max over seeds."
    return False, "Lines: one seed per point (no band)."


def run_ids(sweep: Sweep, status: str) -> set[str]:
    return set(sweep.runs.loc[sweep.runs["status"] == status, "run_id"])


def not_drawn(sweep: Sweep, statuses: Sequence[str]) -> str:
    """'3 diverged, 1 failed, 0 missing' for the given statuses."""
    return ", ".join(f"{int((sweep.runs['status'] == s).sum())} {s}" for s in statuses)


def label_log_axes(fig: Figure, min_labels: int = 3) -> None:
    """Give every log axis of ``fig`` at least ``min_labels`` labelled ticks where it can.

    matplotlib labels only the powers of ten on an axis spanning one to a few decades: 0.03 to 1.2
    reads "10⁻¹, 10⁰". Such an axis gets ticks and labels at 1, 2 and 5 times the powers of ten
    (every integer multiple on an axis under one decade).
    """
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(axis.get_view_interval())
            if not (0 < lo < hi < math.inf):
                continue
            decades = math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1  # powers of ten on the axis
            if decades >= min_labels:
                continue
            subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) > 0.8 else tuple(float(i) for i in range(1, 10))
            axis.set_major_locator(LogLocator(subs=subs))
            axis.set_major_formatter(
                LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(math.inf, math.inf))
            )
            axis.set_minor_formatter(NullFormatter())


def title_clear_of_legends(fig: Figure) -> None:
    """Keep the figure's title (suptitle) off the legends beside the panels: centred over the panels, and wrapped
    to their width when it is longer."""
    title = fig._suptitle  # the Text itself (get_suptitle gives only its string)
    if title is None or not fig.legends or not fig.axes:
        return
    text = title.get_text().replace("\n", " ")
    for _ in range(3):
        fig.draw_without_rendering()  # lays the figure out (constrained layout), so that the extents are final
        renderer = fig.canvas.get_renderer()
        box = title.get_window_extent(renderer)
        legends = [leg.get_window_extent(renderer) for leg in fig.legends]
        if not any(box.overlaps(leg) for leg in legends):
            return
        left = min(ax.get_position().x0 for ax in fig.axes) * fig.bbox.width
        right = min(leg.x0 for leg in legends) - 4
        width = box.width / max(1, title.get_text().count("\n") + 1)
        chars = max(12, int(len(text) * (right - left) / max(width, 1.0)) - 2)
        title.set_text("\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)))
        title.set_x((left + right) / 2 / fig.bbox.width)
        title.set_horizontalalignment("center")


def finish(fig: Figure) -> Figure:
    """The last touches every figure gets before it is drawn (:func:`png` applies them): enough labelled ticks on
    log axes, and the title clear of the legends."""
    FigureCanvasAgg(fig)  # the non-interactive Agg canvas, whatever pyplot's backend is
    label_log_axes(fig)
    title_clear_of_legends(fig)
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (110 dpi), after :func:`finish`."""
    finish(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def new_figure(nrows: int, ncols: int, title: str, sharey: bool = True) -> tuple[Figure, np.ndarray]:
    """A grid of panels for the experiments' figures (lesion, shatter): a little larger than :func:`panels`."""
    fig = Figure(figsize=(max(3.4 * ncols + 1.8, 6.5), 2.7 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def mean_band(ax: Any, data: pd.DataFrame, x: str, y: str, color: Any, arch: str, band: bool = True) -> None:
    """The mean of ``y`` at each ``x`` as a line, and its min–max over the rows there as a band."""
    stats = data.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
    xs = stats.index.to_numpy(dtype="float64")
    ax.plot(xs, stats["mean"], color=color, lw=1.6, markersize=3.5, **arch_marked(arch))
    if band and (stats["max"] > stats["min"]).any():
        ax.fill_between(xs, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)


def arch_legend(fig: Figure, colors: dict[str, Any], band_label: str | None, extra: Iterable[Any] = ()) -> None:
    """One legend for the figure: an entry per arch (marked lines), the band's meaning, and ``extra`` handles."""
    handles: list[Any] = [Line2D([], [], color=c, lw=1.6, label=a, **arch_marked(a)) for a, c in colors.items()]
    if band_label:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label=band_label))
    handles.extend(extra)
    fig.legend(handles=handles, title="arch", loc="outside right upper", frameon=False)
