"""pytest-benchmark: a training step with and without gradient recording.

    pytest benchmarks/test_recorder.py --benchmark-group-by=group

The side-by-side ratio at the README's size (residual, depth 56, width 16,
batch 128) comes from `python benchmarks/recorder_overhead.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recorder_overhead import make_step, measure

from resgrad.gradients import GradientRecorder
from resgrad.models import build_model

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recording", ["off", "every_step"])
def test_training_step_with_recorder(benchmark, device: str, recording: str) -> None:
    torch.manual_seed(0)
    model = build_model("residual", 14, width=8).to(device)
    x = torch.randn(32, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    benchmark.group = f"recorder {device}"
    benchmark.extra_info["images_per_step"] = 32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if recording == "off":  # no recorder attached at all
        step = make_step(model, x, y, None)
        benchmark(lambda: (step(), sync()))
        return
    with GradientRecorder(model, schedule=1) as rec:
        step = make_step(model, x, y, rec)
        benchmark(lambda: (step(), sync()))
    assert rec.to_frame().step.nunique() >= 1


def test_recorder_overhead_script_runs(data_dir: Path) -> None:
    """`python benchmarks/recorder_overhead.py` at a toy size, so that it cannot rot."""
    r = measure(depth=8, width=2, batch_size=8, rounds=2, steps_per_round=1, data_dir=str(data_dir))
    assert r["off_ms"] > 0 and r["on_ms"] > 0 and r["recorded_steps"] > 0
    assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_recorder_overhead_script_runs_under_cuda_graphs(data_dir: Path) -> None:
    """`python benchmarks/recorder_overhead.py --device cuda --cuda-graphs` at a toy size."""
    r = measure(
        depth=8,
        width=2,
        batch_size=8,
        device="cuda",
        rounds=2,
        steps_per_round=1,
        data_dir=str(data_dir),
        cuda_graphs=True,
    )
    assert r["off_ms"] > 0 and r["on_ms"] > 0 and r["recorded_steps"] > 10  # replays recorded, not just warm-up
