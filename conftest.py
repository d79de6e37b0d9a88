"""Fixtures shared by tests/ and benchmarks/: real MNIST from the repo's data/ folder, and one torch thread.

Plain helper functions (``exit_code`` ...) live in tests/helpers.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "MNIST"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A folder holding MNIST/raw with the four official files (copied from ../shared when missing)."""
    data = ROOT / "data"
    raw = data / "MNIST" / "raw"
    if not (raw / "t10k-labels-idx1-ubyte.gz").exists() and not (raw / "t10k-labels-idx1-ubyte").exists():
        if not SHARED_MNIST.exists():
            pytest.fail(f"MNIST is missing: put the four official files in {raw} (see README).")
        shutil.copytree(SHARED_MNIST, data / "MNIST", dirs_exist_ok=True)
    return data


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, and whatever the test sets undone after it.

    Tests use tiny nets on 2-core machines, maybe beside other work: one thread avoids the
    spin-waiting of oversubscribed OpenMP threads (a 30x slowdown seen here). Every test in
    tests/ uses it (tests/conftest.py); benchmarks ask for it where they want it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
