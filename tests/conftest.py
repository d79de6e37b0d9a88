"""Every test here runs torch on one thread.

The fixtures shared with benchmarks/ (``data_dir``, ``one_thread``) are in the repo's root
conftest.py; plain helper functions (``exit_code`` ...) in tests/helpers.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread_per_test(one_thread: None) -> None:
    """Every test gets ``one_thread``: one torch thread, and what the test sets is undone after it."""
