"""`python benchmarks/lightning_grad_norm.py` at a toy size, so that it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="needs Lightning: pip install 'resgrad[lightning]' (make setup)")
from lightning_grad_norm import measure, table  # noqa: E402


def test_lightning_grad_norm_script_runs(data_dir: Path) -> None:
    r = measure(depth=8, width=4, batch_size=8, rounds=2, steps=1, data_dir=str(data_dir))
    assert r["rg_zero_params"] <= r["gn_zero_params"] <= r["params"] == 16 and r["blocks"] == 3
    assert r["rg_first"] > 0 and r["grad_norm_ratio"] > 0 and r["resgrad_ratio"] > 0
    text = table(r, 8, 4, 8, 2)
    assert "| parameters reported as exactly 0 at init (of 16) |" in text and text.count("\n| ") == 7
