"""The report's figures as a person reads them, checked on the figure objects (axes, ticks, bars, legends).

Expected values are computed here by hand from the runs' numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import seaborn as sns
from matplotlib.figure import Figure

from resgrad.report.figures import FIGURES, GAIN_FIGURE, figure_block_gain, figure_test_error
from resgrad.report.plotting import png
from resgrad.report.sweepdata import load_sweep


def _labels(axis: object) -> list[str]:
    """The tick labels a person sees on ``axis`` (within its view, non-empty)."""
    lo, hi = sorted(axis.get_view_interval())  # type: ignore[attr-defined]
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]  # type: ignore[attr-defined]
    return [
        t.label1.get_text()
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and lo * (1 - 1e-9) <= t.get_loc() <= hi * (1 + 1e-9)
    ]


def _styled(make, *args):  # noqa: ANN001, ANN202  (any figure function)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        fig, caption = make(*args)
        png(fig)  # as the report draws it: png() gives the figure its last touches
    return fig, caption


@pytest.mark.parametrize(("low", "high"), [(0.03, 1.2), (0.2, 1.5), (0.5, 0.9), (2e-3, 0.15)])
def test_a_log_axis_spanning_under_two_decades_labels_at_least_three_ticks(low: float, high: float) -> None:
    fig = Figure(figsize=(4, 2.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [low, high])
    ax.set_yscale("log")
    png(fig)
    assert len(_labels(ax.yaxis)) >= 3, _labels(ax.yaxis)


def test_a_log_axis_over_many_decades_keeps_its_powers_of_ten() -> None:
    fig = Figure(figsize=(4, 2.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [1e-9, 1e-2])
    ax.set_yscale("log")
    png(fig)
    labels = _labels(ax.yaxis)
    assert len(labels) >= 3 and all("times" not in label for label in labels), labels  # 10^n only, no 2x10^n


@pytest.mark.slow
def test_test_error_bars_are_min_max_over_seeds_within_0_and_100(small_sweep: Path) -> None:
    sweep = load_sweep(small_sweep)
    # The case: two seeds at 10.2 % and 79.4 % accuracy; mean ± std would reach 103.2 % error.
    acc = {("plain", 8): (0.102, 0.794), ("plain", 14): (0.5, 0.6), ("residual", 8): (0.9, 0.95)}
    acc[("residual", 14)] = (0.0, 0.01)  # errors 100 % and 99 %: the bar ends at 100
    runs = sweep.runs.copy()
    for (arch, depth), (a0, a1) in acc.items():
        for seed, a in ((0, a0), (1, a1)):
            runs.loc[(runs["arch"] == arch) & (runs["depth"] == depth) & (runs["seed"] == seed), "final_test_acc"] = a
    fig, caption = _styled(figure_test_error, dataclasses.replace(sweep, runs=runs))
    ax = fig.axes[0]
    drawn = {}
    for container in ax.containers:  # seaborn's err_style="bars" draws matplotlib errorbars
        (bars,) = container.lines[2]
        for (x0, y0), (_, y1) in bars.get_segments():
            drawn.setdefault(int(round(x0)), []).append(sorted([y0, y1]))
    expected = {}
    for (_, depth), (a0, a1) in acc.items():
        errors = [100 * (1 - a0), 100 * (1 - a1)]
        expected.setdefault(depth, []).append([min(errors), max(errors)])
    assert sorted(drawn) == [8, 14]
    for depth, bars in expected.items():
        assert np.allclose(sorted(drawn[depth]), sorted(bars)), (depth, drawn[depth], bars)
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top <= 100
    assert "bars: min–max over seeds" in caption and "std" not in caption


@pytest.mark.slow
def test_every_report_figure_keeps_its_title_clear_of_the_legend(small_sweep: Path) -> None:
    sweep = load_sweep(small_sweep)
    for name, _, make in [*FIGURES, GAIN_FIGURE]:
        fig, _ = _styled(make, sweep)
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        for legend in fig.legends:
            assert not title.overlaps(legend.get_window_extent(renderer)), name
        assert title.x0 >= 0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height, name


@pytest.mark.slow
def test_the_gain_axes_label_enough_ticks(small_sweep: Path) -> None:
    fig, _ = _styled(figure_block_gain, load_sweep(small_sweep))
    log_axes = [ax.yaxis for ax in fig.axes if ax.get_yscale() == "log"]
    assert log_axes
    for axis in log_axes:
        assert len(_labels(axis)) >= 3, _labels(axis)
