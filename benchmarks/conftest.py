"""Options and parametrisation of the step-timing benchmarks (benchmarks/test_step_timing.py).

    pytest benchmarks/ --benchmark-disable                  # CI: every case once, quickly
    pytest benchmarks/test_step_timing.py --step-depths 8 20 56 --step-batch-size 128 \
        --benchmark-json runs/steps.json                    # then: pytest-benchmark compare runs/steps.json

A test that takes the fixtures ``step_arch``, ``step_depth`` and ``step_device`` is run
for every arch x depth x device; CUDA cases are skipped where torch sees no GPU.
The fixtures ``data_dir`` (MNIST) and ``one_thread`` come from the repo's root conftest.py.
"""

from __future__ import annotations

import pytest
import torch

STEP_DEVICES = ("cpu", "cuda")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("resgrad step timing")
    g.addoption(
        "--step-archs", nargs="+", default=["plain", "residual"], help="archs to time (default: plain residual)"
    )
    g.addoption("--step-depths", nargs="+", type=int, default=[8, 20], help="depths, 6n+2 (default: 8 20)")
    g.addoption(
        "--step-devices", nargs="+", default=list(STEP_DEVICES), help="devices (default: cpu cuda; absent ones skip)"
    )
    g.addoption("--step-width", type=int, default=16, help="width of the first stage (default: 16)")
    g.addoption("--step-batch-size", type=int, default=32, help="images per step (default: 32)")
    g.addoption(
        "--step-mode", default="train_step", help="forward | forward_backward | train_step (default: train_step)"
    )
    g.addoption(
        "--step-threads", type=int, help="torch threads (default: torch's choice; use 1 on a busy shared machine)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opt = metafunc.config.getoption
    if "step_arch" in metafunc.fixturenames:
        metafunc.parametrize("step_arch", opt("step_archs"))
    if "step_depth" in metafunc.fixturenames:
        metafunc.parametrize("step_depth", opt("step_depths"), ids=lambda d: f"d{d}")
    if "step_device" in metafunc.fixturenames:
        no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
        metafunc.parametrize(
            "step_device",
            [pytest.param(d, marks=no_cuda) if d == "cuda" else d for d in opt("step_devices")],
        )


@pytest.fixture
def step_options(request: pytest.FixtureRequest) -> dict[str, object]:
    """Width, batch size and mode from the command line (and torch threads set for the test)."""
    opt = request.config.getoption
    if opt("step_threads"):
        before = torch.get_num_threads()
        torch.set_num_threads(opt("step_threads"))
        request.addfinalizer(lambda: torch.set_num_threads(before))
    return {"width": opt("step_width"), "batch_size": opt("step_batch_size"), "mode": opt("step_mode")}
