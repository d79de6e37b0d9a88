"""pytest-benchmark: one step (default: the training step) per arch x depth x device.

    pytest benchmarks/test_step_timing.py                         # time it; groups by depth
    pytest benchmarks/ --benchmark-disable                        # run each case once (CI)
    pytest benchmarks/test_step_timing.py --benchmark-json runs/a.json
    pytest-benchmark compare runs/a.json runs/b.json

Sizes and grid come from the --step-* options (see benchmarks/conftest.py). The step is
resgrad.bench.timing.make_step, whose CUDA variant ends with torch.cuda.synchronize(), so the
timed function covers the finished GPU work. ``extra_info`` carries images/s. Each case
also checks that the step ran and did its mode's work (weights and gradients against a
copy taken before), timed or not.
"""

from __future__ import annotations

import math

import torch

from resgrad.bench.timing import count_flops, make_step
from resgrad.models import build_model, count_params


def test_step(benchmark, step_arch: str, step_depth: int, step_device: str, step_options: dict) -> None:
    width, batch, mode = step_options["width"], step_options["batch_size"], step_options["mode"]
    device = torch.device(step_device)
    torch.manual_seed(0)
    model = build_model(step_arch, step_depth, width).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5) if mode == "train_step" else None
    step = make_step(model, x, y, mode, optimizer=opt)  # synchronises CUDA inside

    benchmark.group = f"depth {step_depth}"  # read when the measurement starts: set it first
    benchmark.extra_info.update(
        arch=step_arch,
        depth=step_depth,
        width=width,
        batch_size=batch,
        mode=mode,
        device=step_device,
        threads=torch.get_num_threads(),
        params=count_params(model),
        gflop=count_flops(step) / 1e9,
    )
    if benchmark.enabled:
        step()  # warm-up outside the measurement (count_flops above made one call too)
    before = [p.detach().clone() for p in model.parameters()]
    calls = 0

    def timed() -> None:
        nonlocal calls
        calls += 1
        step()

    benchmark(timed)
    if benchmark.stats:  # None or empty under --benchmark-disable
        stats = benchmark.stats.stats
        assert stats.rounds >= 1 and len(stats.data) == stats.rounds
        assert calls >= stats.rounds * benchmark.stats.iterations  # every timed iteration ran the step
        assert 0 < stats.median < math.inf
        benchmark.extra_info["images_per_s"] = batch / stats.median
    else:
        assert calls == 1  # --benchmark-disable: the step runs once, untimed

    # The step did its mode's work: forward leaves weights and gradients alone, the
    # backward leaves a finite gradient on every parameter, the SGD step moves the weights.
    params = list(model.parameters())
    moved = [not torch.equal(p.detach(), b) for p, b in zip(params, before)]
    if mode == "forward":
        assert not any(moved) and all(p.grad is None for p in params)
    else:
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        assert any(p.grad.abs().sum() > 0 for p in params)
        assert any(moved) == (mode == "train_step")
