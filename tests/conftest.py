"""Every test here runs torch on one thread; and the small finished sweep several test files read.

The fixtures shared with benchmarks/ (``data_dir``, ``one_thread``) are in the repo's root
conftest.py; plain helper functions (``exit_code`` ...) in tests/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resgrad.bench.timing import PEAK_MATMUL_N
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep


@pytest.fixture(autouse=True)
def _one_thread_per_test(one_thread: None) -> None:
    """Every test gets ``one_thread``: one torch thread, and what the test sets is undone after it."""


@pytest.fixture
def small_peak_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """`resgrad bench` measures the CPU's peak GFLOP/s with a 256 x 256 matmul instead of 2048 x 2048.

    The full size costs a test core about 1.5 s per bench run; what the tests check of the peak (a
    positive GFLOP/s, its precision, the % of peak beside each point) does not depend on the size.
    """
    monkeypatch.setitem(PEAK_MATMUL_N, "cpu", 256)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished sweep of two tiny runs (residual, depths 8 and 14, width 2, 4 steps), made once per session.

    Read it, never change it: a test that changes a sweep works on a copy (``helpers.copy_sweep``).
    """
    out = tmp_path_factory.mktemp("tiny") / "sweep"
    spec = SweepSpec(
        grid={"arch": ["residual"], "depth": [8, 14], "width": [2]},
        fixed={
            "steps": 4,
            "record_every": 1,
            "eval_every": 2,
            "train_subset": 256,
            "test_subset": 100,
            "threads": 1,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    before = torch.get_num_threads()
    try:
        assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete", "complete"]
    finally:
        torch.set_num_threads(before)
    return out
