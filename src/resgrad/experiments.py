"""Plumbing shared by the experiments on saved nets (:mod:`resgrad.lesion`, :mod:`resgrad.shatter`).

Finding the run folders of a sweep (or one run), and drawing plain-vs-residual line plots
as PNG bytes. Output folders are checked with :func:`resgrad.files.prepare_output`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from resgrad.errors import UsageError
from resgrad.plotting import ARCH_COLORS
from resgrad.train import TrainConfig, check_run, read_summary


@dataclass
class SavedRun:
    """A run folder: its config, its summary.json (None when unreadable) and whether it kept its weights."""

    path: Path
    config: TrainConfig
    summary: dict[str, Any] | None

    @property
    def status(self) -> str:
        return (self.summary or {}).get("status") or "missing"

    @property
    def has_weights(self) -> bool:
        return (self.path / "model.pt").is_file()

    def unusable(self) -> str | None:
        """Why the run's trained weights cannot be used (not complete, no model.pt, damaged); None if they can."""
        if self.status != "complete":
            return f"{self.status}, not complete"
        if not self.has_weights:
            if "model.pt" in ((self.summary or {}).get("files") or {}):
                return "damaged: model.pt is missing"
            return "no model.pt (made before resgrad saved weights)"
        problem = check_run(self.path, self.summary)
        return f"damaged: {problem}" if problem else None


def _read_config(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())).validate()
    except (OSError, json.JSONDecodeError, TypeError, AttributeError):
        raise UsageError(f"{run_dir} is not a run folder: it has no readable config.json.") from None


def saved_runs(path: str | os.PathLike[str]) -> tuple[list[SavedRun], bool]:
    """The run folders of a sweep folder (its grid, in grid order) or the one run folder ``path``.

    Returns the runs (present folders only) and whether ``path`` is a sweep folder.
    Raises ``UsageError`` when ``path`` is neither.
    """
    from resgrad.sweep import load_spec  # the sweep module pulls in the executors; only needed here

    path = Path(path)
    if (path / "sweep.json").is_file():
        runs = []
        for config in load_spec(path).configs():
            run_dir = path / "runs" / config.run_id()
            if (run_dir / "config.json").is_file():
                runs.append(SavedRun(run_dir, _read_config(run_dir), read_summary(run_dir)))
        return runs, True
    if (path / "config.json").is_file():
        return [SavedRun(path, _read_config(path), read_summary(path))], False
    raise UsageError(
        f"{path} is neither a sweep folder (with sweep.json) nor a run folder (with config.json); "
        "give one made by `resgrad sweep` or `resgrad train`."
    )


# ---------------------------------------------------------------- figures


def arch_colors(archs: Iterable[str]) -> dict[str, Any]:
    spare = iter(["#7d3c98", "#27ae60", "#7f8c8d", "#d35400"])
    return {a: ARCH_COLORS.get(a) or next(spare) for a in dict.fromkeys(archs)}


def arch_style(arch: str) -> dict[str, str]:
    """Plain dashed with circles, residual solid with squares (as in the report's figures)."""
    return {"linestyle": "--" if "plain" in arch else "-", "marker": "o" if "plain" in arch else "s"}


def new_figure(nrows: int, ncols: int, title: str, sharey: bool = True) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(3.4 * ncols + 1.8, 6.5), 2.7 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    fig.suptitle(title, fontweight="bold")
    return fig, axes


def mean_band(ax: Any, data: pd.DataFrame, x: str, y: str, color: Any, arch: str, band: bool = True) -> None:
    """The mean of ``y`` at each ``x`` as a line, and its min–max over the rows there as a band."""
    stats = data.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
    xs = stats.index.to_numpy(dtype="float64")
    ax.plot(xs, stats["mean"], color=color, lw=1.6, markersize=3.5, **arch_style(arch))
    if band and (stats["max"] > stats["min"]).any():
        ax.fill_between(xs, stats["min"], stats["max"], color=color, alpha=0.2, lw=0)


def arch_legend(fig: Figure, colors: dict[str, Any], band_label: str | None, extra: Iterable[Any] = ()) -> None:
    handles: list[Any] = [Line2D([], [], color=c, lw=1.6, label=a, **arch_style(a)) for a, c in colors.items()]
    if band_label:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label=band_label))
    handles.extend(extra)
    fig.legend(handles=handles, title="arch", loc="outside right upper", frameon=False)


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # the non-interactive Agg canvas, whatever pyplot's backend is
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
