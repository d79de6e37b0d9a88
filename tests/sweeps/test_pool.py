"""Warm pool workers: each serves many runs, with the numbers of runs trained in the driver's own process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import resgrad.sweeps.executors as executors
from resgrad.config import TrainConfig
from resgrad.rundir import RunResult
from resgrad.sweeps.executors import RunFailure
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

# The columns that depend on the machine's load, not on the numbers.
TIMES = ["wall_seconds", "images_per_s"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pid of each worker process the pool starts, in order."""
    pids: list[int] = []

    class Counted(executors._Worker):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            pids.append(self.process.pid)

    monkeypatch.setattr(executors, "_Worker", Counted)
    return pids


def tiny(data_dir: Path, **kw) -> TrainConfig:
    base = dict(
        arch="residual",
        depth=8,
        width=2,
        steps=6,
        record_every=2,
        train_subset=256,
        test_subset=200,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_two_warm_workers_serve_four_runs_with_the_numbers_of_one_process(
    tmp_path: Path, data_dir: Path, started: list[int]
) -> None:
    spec = SweepSpec(
        grid={"arch": ["plain", "residual"], "depth": [8], "width": [2], "seed": [0, 1]},
        fixed={
            "steps": 6,
            "record_every": 2,
            "train_subset": 256,
            "test_subset": 200,
            "threads": 1,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    alone = run_sweep(spec, tmp_path / "alone", workers=1, progress=False)
    assert started == []  # one worker: the driver's own process
    pool = run_sweep(spec, tmp_path / "pool", workers=2, progress=False)
    assert len(started) == 2 and len(pool) == 4  # two processes, two runs each
    assert (pool.status == "complete").all()
    pd.testing.assert_frame_equal(pool.drop(columns=TIMES), alone.drop(columns=TIMES))
    for run_id in alone.run_id:
        a, b = tmp_path / "alone" / "runs" / run_id, tmp_path / "pool" / "runs" / run_id
        pd.testing.assert_frame_equal(
            pd.read_parquet(b / "grad_norms.parquet"), pd.read_parquet(a / "grad_norms.parquet")
        )
        pd.testing.assert_frame_equal(pd.read_csv(b / "metrics.csv"), pd.read_csv(a / "metrics.csv"))
        for name, value in torch.load(a / "model.pt", weights_only=True).items():
            torch.testing.assert_close(torch.load(b / "model.pt", weights_only=True)[name], value, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a run that raises in its worker: CUDA asked for, absent")
def test_a_run_that_raises_in_a_worker_fails_alone_and_the_worker_serves_on(data_dir: Path, started: list[int]) -> None:
    # The sweep's pre-flight would refuse device="cuda" here; the pool itself trains whatever it gets.
    configs = [tiny(data_dir, seed=0), tiny(data_dir, device="cuda"), tiny(data_dir, seed=1), tiny(data_dir, seed=2)]
    outcomes = {o.config.run_id(): o for o in executors._run_pool(configs, workers=2, threads=1)}
    assert len(started) == 2 and len(outcomes) == 4  # no worker died or was replaced
    failed = outcomes.pop(configs[1].run_id())
    assert isinstance(failed, RunFailure) and "device 'cuda' was asked for" in failed.error
    assert all(isinstance(o, RunResult) and o.status == "complete" for o in outcomes.values())
    # The same numbers as in this process: a worker's earlier runs (one raised) leave nothing behind.
    for config in configs[2:]:
        here = executors._run_point(config)
        pd.testing.assert_frame_equal(outcomes[config.run_id()].grad_norms, here.grad_norms)
        pd.testing.assert_frame_equal(outcomes[config.run_id()].metrics, here.metrics)
