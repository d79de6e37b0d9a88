"""The faster paths against the eager float32 contiguous step over 100 steps (losses, every recorded norm); evaluation.

The tolerances are those docs/performance.md states. Without batch norm, channels-last and
compiled steps round differently in the last bits only: 1e-5 relative (measured: <= 6e-7).
With batch norm, whose backward subtracts nearly equal terms, such differences grow step by
step as much as those of a one-ulp change of the initial weights do (measured on this
config: losses 1.7e-3 vs 6.6e-4 for the nudge, norms 3e-2 vs 3e-2): the bounds there are
looser, and the same for any float32 rounding change.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from resgrad.compute import EVAL_BATCH, bfloat16_is_native, evaluate, keep_freed_memory, resolve_channels_last
from resgrad.config import TrainConfig
from resgrad.data import load_split
from resgrad.errors import UsageError
from resgrad.models import build_model
from resgrad.records import QUANTITIES
from resgrad.rundir import RunResult
from resgrad.train import train

BASE = dict(
    arch="residual",
    depth=8,
    width=8,
    steps=100,
    batch_size=32,
    record_every=10,
    eval_every=50,
    train_subset=3200,
    test_subset=500,
    threads=1,
    device="cpu",
)


@pytest.fixture(scope="module")
def eager(data_dir: Path) -> dict[str, RunResult]:
    """The reference runs, eager float32 contiguous, without and with batch norm."""
    return {
        norm: train(TrainConfig(**BASE, norm=norm, channels_last=False, data_dir=str(data_dir)), progress=False)
        for norm in ("none", "batch")
    }


def relative_gaps(a: RunResult, b: RunResult) -> dict[str, float]:
    """The largest relative gap of ``b`` from ``a``: per step for the losses, and per recorded step and quantity the
    distance of the vector of layer norms (an L2 norm over layers) for the gradient records."""
    assert a.status == b.status == "complete"
    pd.testing.assert_frame_equal(a.grad_norms.drop(columns="norm"), b.grad_norms.drop(columns="norm"))
    assert a.metrics.test_acc.notna().sum() == 2
    loss_a, loss_b = a.metrics.train_loss.to_numpy(), b.metrics.train_loss.to_numpy()
    test_a, test_b = a.metrics.test_loss.dropna().to_numpy(), b.metrics.test_loss.dropna().to_numpy()
    gaps = {
        "train_loss": np.max(np.abs(loss_b - loss_a) / loss_a),
        "test_loss": np.max(np.abs(test_b - test_a) / test_a),
    }
    for q in QUANTITIES:
        rows = [
            f[f.quantity == q].pivot(index="step", columns="layer_index", values="norm").to_numpy()
            for f in (a.grad_norms, b.grad_norms)
        ]
        assert np.isfinite(rows[0]).all() and np.isfinite(rows[1]).all()
        gaps[q] = np.max(np.linalg.norm(rows[1] - rows[0], axis=1) / np.linalg.norm(rows[0], axis=1))
    return gaps


def check(a: RunResult, b: RunResult, loss: float, norms: float) -> None:
    gaps = relative_gaps(a, b)
    assert gaps["train_loss"] <= loss and gaps["test_loss"] <= loss, gaps
    assert all(gaps[q] <= norms for q in QUANTITIES), gaps


@pytest.mark.slow
def test_channels_last_steps_match_the_eager_contiguous_ones_over_100_steps(eager, data_dir: Path) -> None:
    for norm, loss, norms in (("none", 1e-5, 1e-5), ("batch", 1e-2, 0.1)):
        asked = None if norm == "none" else True  # auto: channels-last without batch norm only
        fast = train(TrainConfig(**BASE, norm=norm, channels_last=asked, data_dir=str(data_dir)), progress=False)
        assert fast.summary["channels_last"] is True
        check(eager[norm], fast, loss, norms)
        if norm == "none":  # without batch norm the evaluations agree to the last bits: the same predictions
            pd.testing.assert_series_equal(fast.metrics.test_acc, eager[norm].metrics.test_acc)


@pytest.mark.slow
def test_compiled_steps_match_the_eager_ones_over_100_steps(eager, data_dir: Path) -> None:
    """Compiled steps (all but the recorded ones, which run eagerly for the recorder's hooks) on contiguous tensors."""
    for norm, loss, norms in (("none", 1e-5, 1e-5), ("batch", 1e-2, 0.1)):
        config = TrainConfig(**BASE, norm=norm, channels_last=False, compile=True, data_dir=str(data_dir))
        fast = train(config, progress=False)
        assert fast.summary["compile_seconds"] > 0  # compiled code ran
        check(eager[norm], fast, loss, norms)


def test_compile_on_the_cpu_without_a_cpp_compiler_is_a_usage_error(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    monkeypatch.delenv("CXX", raising=False)
    config = TrainConfig(**{**BASE, "steps": 2}, compile=True, data_dir=str(data_dir))
    with pytest.raises(UsageError, match="--compile on the CPU needs a C.. compiler"):
        train(config, progress=False)


def test_bfloat16_counts_as_native_where_the_cpu_says_it_has_bfloat16_kernels() -> None:
    flags = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert bfloat16_is_native(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert bfloat16_is_native(torch.device("cuda"))


STEPS_FAULTS = """
import resource, sys, torch
from resgrad.compute import keep_freed_memory
from resgrad.models import build_model
from resgrad.train import train_step
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = build_model("seed-residual").to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
for _ in range(10):  # the heap grows to the step's peak
    train_step(model, opt, x, y, channels_last=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    train_step(model, opt, x, y, channels_last=True)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or not keep_freed_memory(), reason="glibc's malloc only")
def test_kept_freed_memory_takes_the_page_faults_out_of_cpu_steps() -> None:
    """Each in a fresh process: seed-residual steps at batch 128 with glibc's default thresholds, then with ours."""
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", STEPS_FAULTS, mode], capture_output=True, text=True, check=True)
        faults[mode] = float(out.stdout.split()[-1])
    assert faults["keep"] < 0.1 * faults["default"], faults  # measured: 0-115 vs 2,800-4,500 a step


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_evaluation_in_batches_of_250_gives_the_numbers_of_batches_of_1000(data_dir: Path, norm: str) -> None:
    """The CPU's evaluation batch went from 1,000 to 250 images: the same predictions, the loss summed in another order."""
    torch.manual_seed(0)
    model = build_model("residual", 8, width=4, norm=norm)
    test = load_split(False, data_dir, 2000)
    for channels_last in (False, True):
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        before = evaluate(model, test, 1000, channels_last=channels_last)
        now = evaluate(model, test, EVAL_BATCH["cpu"], channels_last=channels_last)
        assert now[1] == before[1] and now[0] == pytest.approx(before[0], rel=1e-6)


def test_auto_is_channels_last_on_the_cpu_for_nets_without_batch_norm_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last(None, cpu, "none") is True
    assert resolve_channels_last(None, cpu, "batch") is False  # batch norm's channels-last CPU kernel rounds more
    assert resolve_channels_last(None, cuda, "none") is False
    assert resolve_channels_last(True, cpu, "batch") is True and resolve_channels_last(False, cpu, "none") is False
