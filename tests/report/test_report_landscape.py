"""The landscape study's tables and figures, from hand-made frames: a rise on the line from init is found,
rounding is not a rise, non-finite losses are counted, not drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resgrad.report.landscape import (
    COLUMNS,
    CURVATURE_COLUMNS,
    FIGURES,
    landscape_display,
    landscape_figures,
    landscape_table,
    path_monotone,
    read_landscape,
)


def _frame(losses: dict[str, list[float]], surface: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """init-final rows with the given losses per arch (depth 20, seed 0), and a 3 x 3 surface per arch."""
    rows = []
    for arch, line in losses.items():
        head = dict(run_id=f"{arch}-run", arch=arch, depth=20, width=8, norm="batch", seed=0)
        for k, loss in enumerate(line):
            rows.append({**head, "kind": "init-final", "alpha": k / (len(line) - 1), "beta": math.nan, "loss": loss})
        z = (surface or {}).get(arch, np.array([[2.0, 1.0, 2.0], [1.0, 0.1, 1.0], [2.0, 1.0, 2.0]]))
        for j, b in enumerate((-1.0, 0.0, 1.0)):
            for i, a in enumerate((-1.0, 0.0, 1.0)):
                rows.append({**head, "kind": "2d", "alpha": a, "beta": b, "loss": z[j, i]})
        for a in (-1.0, -0.5, 0.0, 0.5, 1.0):
            rows.append({**head, "kind": "1d", "alpha": a, "beta": 0.0, "loss": 0.1 + a * a})
    frame = pd.DataFrame(rows)
    return frame.assign(accuracy=np.where(frame["loss"] < 1, 0.9, 0.2))[COLUMNS]


def _curvature() -> pd.DataFrame:
    rows = [
        dict(run_id="residual-run", arch="residual", lambda_max=10.0, lambda_min=-0.01, loss=0.02, accuracy=0.995),
        dict(run_id="plain-run", arch="plain", lambda_max=40.0, lambda_min=-4.0, loss=0.05, accuracy=0.98),
    ]
    extra = dict(depth=20, width=8, norm="batch", seed=0, lambda_max_error=0.0, lambda_min_error=0.0)
    frame = pd.DataFrame(
        [{**r, **extra, "hessian_products": 20, "weights": 1000, "images": 1000, "seconds": 1.0} for r in rows]
    )
    return frame.assign(abs_min_over_max=(frame["lambda_min"] / frame["lambda_max"]).abs())[CURVATURE_COLUMNS]


def test_the_barrier_on_the_line_from_init_is_found_and_rounding_is_not_one() -> None:
    frame = _frame({"plain": [3.0, 2.5, 2.7, 2.9, 1.0, 0.05], "residual": [3.0, 2.0, 1.0, 0.5, 0.02, 0.02 + 1e-8]})
    found = path_monotone(frame).set_index("run_id")
    assert found.loc["plain-run", "path_barrier"] == pytest.approx(0.4)  # 2.9 above the 2.5 before it
    assert not found.loc["plain-run", "monotone"]
    assert found.loc["residual-run", "path_barrier"] == pytest.approx(1e-8)
    assert found.loc["residual-run", "monotone"]  # 1e-8 < FLAT x 0.02: float32 rounding, not a barrier
    # a climb at the end of a line that started high is a climb all the same
    end = path_monotone(_frame({"residual": [2e4, 10.0, 0.0447, 0.0494]})).set_index("run_id")
    assert not end.loc["residual-run", "monotone"] and end.loc["residual-run", "path_barrier"] == pytest.approx(0.0047)
    nan = path_monotone(_frame({"plain": [3.0, math.nan, 1.0]})).set_index("run_id")
    assert not nan.loc["plain-run", "monotone"]


def test_the_table_has_one_row_per_twin_with_its_curvature_and_path() -> None:
    frame = _frame({"plain": [3.0, 2.5, 2.7, 1.0, 0.05], "residual": [3.0, 2.0, 1.0, 0.5, 0.02]})
    table = landscape_table(frame, _curvature())
    assert table["arch"].tolist() == ["plain", "residual"]
    assert table["abs_min_over_max"].tolist() == pytest.approx([0.1, 0.001])
    assert table["accuracy"].tolist() == pytest.approx([98.0, 99.5])  # percent for people
    assert table["monotone"].tolist() == [False, True]
    shown = landscape_display(table)
    assert shown["init→final monotone"].tolist() == ["no", "yes"]
    assert shown["|λ_min/λ_max|"].tolist() == ["0.1", "0.001"]
    assert shown["accuracy (%)"].tolist() == ["98.00", "99.50"]


@pytest.mark.slow  # three figures: about 10 s on a busy 2-core machine
def test_the_figures_draw_and_count_the_points_they_cannot_show() -> None:
    bad = np.array([[2.0, math.inf, 2.0], [1.0, 0.1, math.nan], [2.0, 0.0, 2.0]])
    frame = _frame({"plain": [3.0, 1.0, 0.05], "residual": [3.0, 1.0, 0.02]}, {"plain": bad})
    figures = landscape_figures(frame)
    assert list(figures) == list(FIGURES)
    for heading, png, caption in figures.values():
        assert png.startswith(b"\x89PNG") and heading and caption
    assert "3 points with a non-finite or zero loss are left blank" in figures["landscape_2d"][2]
    assert "log-spaced levels from 0.1 to 2" in figures["landscape_2d"][2]


def test_a_landscape_csv_without_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "landscape.csv"
    _frame({"plain": [1.0, 0.5]}).drop(columns="beta").to_csv(path, index=False)
    with pytest.raises(ValueError, match="has no column 'beta'"):
        read_landscape(path)
