"""pytest-benchmark: one step (default: the training step) per arch x depth x device.

    pytest benchmarks/test_step_timing.py                         # time it; groups by depth
    pytest benchmarks/ --benchmark-disable                        # run each case once (CI)
    pytest benchmarks/test_step_timing.py --benchmark-json runs/a.json
    pytest-benchmark compare runs/a.json runs/b.json

Sizes and grid come from the --step-* options (see benchmarks/conftest.py). The step is
resgrad.bench.make_step, whose CUDA variant ends with torch.cuda.synchronize(), so the
timed function covers the finished GPU work. ``extra_info`` carries images/s.
"""

from __future__ import annotations

import torch

from resgrad.bench import count_flops, make_step
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
        arch=step_arch, depth=step_depth, width=width, batch_size=batch, mode=mode, device=step_device,
        threads=torch.get_num_threads(), params=count_params(model), gflop=count_flops(step) / 1e9,
    )
    if benchmark.enabled:
        step()  # warm-up outside the measurement (count_flops above made one call too)
    benchmark(step)
    if benchmark.stats:  # None or empty under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
