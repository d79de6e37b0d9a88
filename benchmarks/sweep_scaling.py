"""How a sweep scales from 1 to 2 local workers, measured side by side in one go.

    python benchmarks/sweep_scaling.py                  # 8 short runs, 1 torch thread each
    python benchmarks/sweep_scaling.py --steps 100 --train-subset 8192

The same small grid (plain/residual x depths 8, 14 x widths 4, 8) runs twice with
``resgrad.sweeps.sweep.run_sweep``: with ``--workers 1`` (in this process) and with
``--workers 2`` (two spawned processes), each run on 1 torch thread, each into a
fresh folder. Wall times include everything a user waits for (the workers'
start-up too). The script prints both and the speedup, and checks that both
sweeps produced the same numbers. ``run_scaling`` is importable for a
pytest-benchmark wrapper.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.data import load_split
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

SAME = ["run_id", "status", "final_test_acc", "final_test_loss", "final_train_loss", "steps"]


def run_scaling(
    steps: int = 40,
    train_subset: int = 2048,
    test_subset: int = 500,
    archs: Sequence[str] = ("plain", "residual"),
    depths: Sequence[int] = (8, 14),
    widths: Sequence[int] = (4, 8),
    seeds: Sequence[int] = (0,),
    workers: Sequence[int] = (1, 2),
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Run one grid once per worker count (1 thread per run); return a flat row of wall times.

    Returns:
        ``runs``, ``steps``, ``threads_per_run``, ``cpu_count``, ``workers_<n>_wall_s`` (the
        whole sweep) and ``workers_<n>_run_mean_s`` (one run's own wall time) for each worker
        count, ``speedup`` (first wall time / last) and ``same_numbers`` (every sweep gave the
        first one's summary numbers).
    """
    spec = SweepSpec(
        grid={"arch": list(archs), "depth": list(depths), "width": list(widths), "seed": list(seeds), "lr": [0.05]},
        fixed={
            "steps": steps,
            "train_subset": train_subset,
            "test_subset": test_subset,
            "eval_every": steps,
            "threads": 1,
            "device": "cpu",
            "data_dir": data_dir,
        },
    )
    load_split(False, data_dir, subset=1)  # warm the driver's imports and file cache outside the timings
    row: dict[str, Any] = {
        "runs": len(spec.configs()),
        "steps": steps,
        "threads_per_run": 1,
        "cpu_count": os.cpu_count(),
    }
    summaries: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="resgrad-scaling-") as tmp:
        for n in workers:
            t0 = time.perf_counter()
            summary = run_sweep(spec, Path(tmp) / f"workers{n}", executor="local", workers=n, progress=False)
            row[f"workers_{n}_wall_s"] = time.perf_counter() - t0
            row[f"workers_{n}_run_mean_s"] = float(summary.wall_seconds.mean())  # one run, start to end
            if not (summary.status == "complete").all():
                raise RuntimeError(f"the benchmark sweep with {n} workers did not complete:\n{summary}")
            summaries.append(summary)
    row["speedup"] = row[f"workers_{workers[0]}_wall_s"] / row[f"workers_{workers[-1]}_wall_s"]
    row["same_numbers"] = all(s[SAME].equals(summaries[0][SAME]) for s in summaries[1:])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="SGD steps per run (default: 40)")
    p.add_argument("--train-subset", type=int, default=2048, help="training images (default: 2048)")
    p.add_argument("--test-subset", type=int, default=500, help="test images (default: 500)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    a = p.parse_args()
    r = run_scaling(steps=a.steps, train_subset=a.train_subset, test_subset=a.test_subset, data_dir=a.data_dir)
    print(
        f"sweep scaling: {r['runs']} runs of {r['steps']} steps (plain/residual x depths 8, 14 x widths 4, 8), "
        f"1 torch thread per run, {r['cpu_count']} CPUs"
    )
    for n in (1, 2):
        print(
            f"  --workers {n}: {r[f'workers_{n}_wall_s']:.1f} s "
            f"(one run takes {r[f'workers_{n}_run_mean_s']:.1f} s on average)"
        )
    print(f"  speedup 1 -> 2 workers: {r['speedup']:.2f}x   same numbers: {r['same_numbers']}")


if __name__ == "__main__":  # the guard matters: spawned workers import this file
    main()
