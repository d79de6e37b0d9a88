"""benchmarks/gpu_goals.py on a folder laid out as benchmarks/gpu.sh leaves it, with hand-picked numbers.

pytest benchmarks/test_gpu_goals.py --benchmark-disable
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from gpu_goals import goals

HERE = Path(__file__).resolve().parent


def _run_folder(path: Path, images_per_s: float, status: str = "complete") -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"status": status, "images_per_s": images_per_s}))


def _bench(path: Path, eager_ms: float, graphed_ms: float) -> None:
    path.mkdir(parents=True)
    point = dict(
        device="cuda",
        arch="residual",
        depth=56,
        width=16,
        batch_size=128,
        mode="train_step",
        dtype="float32",
        status="ok",
    )
    rows = [
        {**point, "cuda_graphs": False, "median_ms": eager_ms},
        {**point, "cuda_graphs": True, "median_ms": graphed_ms},
        {**point, "depth": 8, "cuda_graphs": True, "median_ms": 0.5},  # another point: not the goal's
    ]
    pd.DataFrame(rows).to_csv(path / "bench.csv", index=False)


def test_goals_from_a_complete_folder(tmp_path: Path) -> None:
    _run_folder(tmp_path / "train-eager", 20_000.0)
    _run_folder(tmp_path / "train-graphed", 120_000.0)
    _bench(tmp_path / "graphs", 17.7, 3.5)
    (tmp_path / "stages.csv").write_text(
        "stage,limit_s,exit,seconds\nsweep eager,80,0,60.0\nsweep graphed,60,0,25.0\nCUDA grid,150,124,150.0\n"
    )
    table = goals(tmp_path).set_index("goal")
    train, step, sweep = table.iloc[0], table.iloc[1], table.iloc[2]
    assert (train["eager"], train["graphed"], train["graphed / eager"], train["met"]) == (20_000, 120_000, 6.0, "yes")
    assert (step["eager"], step["graphed"], step["met"]) == (17.7, 3.5, "yes")
    assert step["graphed / eager"] == pytest.approx(3.5 / 17.7)
    assert (sweep["eager"], sweep["graphed"], sweep["met"]) == (60.0, 25.0, "no")  # 25/60 > 1/3
    assert sweep["graphed / eager"] == pytest.approx(25 / 60)


def test_missing_or_unfinished_stages_are_not_measured(tmp_path: Path) -> None:
    _run_folder(tmp_path / "train-eager", 20_000.0)
    _run_folder(tmp_path / "train-graphed", 120_000.0, status="diverged")
    (tmp_path / "stages.csv").write_text(
        "stage,limit_s,exit,seconds\nsweep eager,80,0,60.0\nsweep graphed,60,124,60.0\n"  # graphed ran out of time
    )
    table = goals(tmp_path)  # no graphs/ folder at all
    assert list(table["met"]) == ["not measured"] * 3


def test_the_script_writes_goals_md(tmp_path: Path) -> None:
    _bench(tmp_path / "graphs", 17.7, 3.5)
    proc = subprocess.run(
        [sys.executable, str(HERE / "gpu_goals.py"), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "goals.md").read_text()
    assert text == proc.stdout
    assert "| residual-56 width 16 batch 128 train_step, ms | graphed <= 4 ms | 17.7 | 3.5 | 0.198 | yes |" in text
    assert text.count("not measured") == 2
