"""Shared fixtures: real MNIST from the repo's data/ folder (copied from ../shared by the Makefile)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "MNIST"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A folder holding MNIST/raw with the four official files."""
    data = ROOT / "data"
    raw = data / "MNIST" / "raw"
    if not (raw / "t10k-labels-idx1-ubyte.gz").exists() and not (raw / "t10k-labels-idx1-ubyte").exists():
        if not SHARED_MNIST.exists():
            pytest.fail(f"MNIST is missing: put the four official files in {raw} (see README).")
        shutil.copytree(SHARED_MNIST, data / "MNIST", dirs_exist_ok=True)
    return data


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    """Tests use tiny nets on 2-core machines, maybe beside other work: one torch thread avoids
    the spin-waiting of oversubscribed OpenMP threads (a 30x slowdown seen here), and whatever a
    test sets is undone after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
