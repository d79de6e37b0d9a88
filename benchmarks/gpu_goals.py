"""Issue 12's goals, eager vs CUDA graphs, from the folder one `bash benchmarks/gpu.sh` run wrote.

    python benchmarks/gpu_goals.py results/bench/nvidia-h200     # prints goals.md and writes it there

Reads what the script's stages left: ``graphs/bench.csv`` (the training step, eager and
graphed side by side), ``train-eager/`` and ``train-graphed/`` (run folders) and
``stages.csv`` (each stage's wall seconds and exit status). A goal whose inputs are
missing, or whose stage did not finish, is "not measured", never guessed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.files import write_text
from resgrad.report.markdown import markdown_table

COLUMNS = ["goal", "target", "eager", "graphed", "graphed / eager", "met"]
STEP_POINT = dict(arch="residual", depth=56, width=16, batch_size=128, mode="train_step", dtype="float32")


def _images_per_s(run_dir: Path) -> float:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return math.nan
    value = summary.get("images_per_s") if summary.get("status") == "complete" else None
    return float(value) if value is not None else math.nan


def _step_ms(bench_csv: Path, graphed: bool) -> float:
    try:
        rows = pd.read_csv(bench_csv)
    except (OSError, ValueError):
        return math.nan
    match = (rows["status"] == "ok") & (rows["cuda_graphs"].astype(bool) == graphed)
    for column, value in STEP_POINT.items():
        match &= rows[column] == value
    return float(rows.loc[match, "median_ms"].iloc[0]) if match.any() else math.nan


def _stage_seconds(stages_csv: Path, stage: str) -> float:
    try:
        stages = pd.read_csv(stages_csv, dtype={"exit": str})
    except (OSError, ValueError):
        return math.nan
    done = stages[(stages["stage"] == stage) & (stages["exit"] == "0")]
    return float(done["seconds"].iloc[-1]) if len(done) else math.nan


def _row(goal: str, target: str, eager: float, graphed: float, ok: Any) -> dict[str, Any]:
    ratio = graphed / eager if eager > 0 else math.nan  # NaN stays NaN
    measured = not (math.isnan(eager) or math.isnan(graphed))
    return {
        "goal": goal,
        "target": target,
        "eager": eager,
        "graphed": graphed,
        "graphed / eager": ratio,
        "met": ("yes" if ok(graphed, ratio) else "no") if measured else "not measured",
    }


def goals(folder: str | Path) -> pd.DataFrame:
    """One row per goal: the eager and graphed figures, their ratio and whether the goal is met."""
    folder = Path(folder)
    return pd.DataFrame(
        [
            _row(
                "seed-residual batch 64 training, images/s",
                "graphed >= 5x eager",
                _images_per_s(folder / "train-eager"),
                _images_per_s(folder / "train-graphed"),
                lambda graphed, ratio: ratio >= 5,
            ),
            _row(
                "residual-56 width 16 batch 128 train_step, ms",
                "graphed <= 4 ms",
                _step_ms(folder / "graphs" / "bench.csv", False),
                _step_ms(folder / "graphs" / "bench.csv", True),
                lambda graphed, ratio: graphed <= 4,
            ),
            _row(
                "8-run sweep, 300 steps, 4 workers: wall s",
                "graphed <= 1/3 of eager",
                _stage_seconds(folder / "stages.csv", "sweep eager"),
                _stage_seconds(folder / "stages.csv", "sweep graphed"),
                lambda graphed, ratio: ratio <= 1 / 3,
            ),
        ],
        columns=COLUMNS,
    )


def goals_markdown(table: pd.DataFrame) -> str:
    """goals.md: how each figure was measured, then the table."""

    def cell(value: Any, column: str) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:,.3g}" if column == "graphed / eager" else f"{value:,.4g}"
        return str(value)

    return "\n".join(
        [
            "# Eager vs CUDA graphs: issue 12's goals",
            "",
            "Training images/s from each run's summary.json (train_seconds: evaluation and start-up left out); "
            "the step from graphs/bench.csv (median of torch.utils.benchmark); the sweep's wall seconds from "
            "stages.csv (the whole command, start-up included).",
            "",
            markdown_table(table, cell),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder benchmarks/gpu.sh wrote, e.g. results/bench/nvidia-h200")
    folder = p.parse_args().folder
    text = goals_markdown(goals(folder))
    write_text(folder / "goals.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
