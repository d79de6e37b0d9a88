"""--cuda-graphs: where it applies, its errors, and (on a GPU) graphed numbers against eager ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import autograd_norms, exit_code

from resgrad.bench.config import BenchConfig, grid
from resgrad.bench.report import bench_markdown, graphs_table
from resgrad.bench.run import run_bench
from resgrad.config import TrainConfig
from resgrad.cudagraph import resolve_cuda_graphs
from resgrad.errors import UsageError
from resgrad.train import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where CUDA is absent")


# ---------------------------------------------------------------- where graphs apply


def test_auto_means_graphs_exactly_on_cuda_and_off_means_never() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cuda_graphs("auto", cpu) is False and resolve_cuda_graphs("auto", cuda) is True
    assert resolve_cuda_graphs("off", cpu) is False and resolve_cuda_graphs("off", cuda) is False
    assert resolve_cuda_graphs("on", cuda) is True
    with pytest.raises(UsageError, match="cuda-graphs 'on' needs a CUDA device"):
        resolve_cuda_graphs("on", cpu)
    with pytest.raises(UsageError, match="unknown cuda-graphs 'maybe'"):
        resolve_cuda_graphs("maybe", cpu)


@NO_CUDA
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_graphs_on_without_cuda_exits_2_with_one_sentence_and_writes_nothing(
    command: str, tmp_path: Path, data_dir: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = [command, "--cuda-graphs", "on", "--steps", "1", "--data-dir", str(data_dir), "--out", str(out), "--quiet"]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resgrad {command}: error: cuda-graphs 'on' needs a CUDA device, but torch sees no CUDA device "
        "here; use --cuda-graphs auto or off."
    )
    assert not out.exists()


def test_a_replayed_record_is_copied_per_step_not_shared() -> None:
    """What replays do to the recorder, emulated on the CPU: the record made at capture holds a buffer that
    each replay overwrites in place; every replayed step must keep its own copy."""
    import torch.nn.functional as F

    from resgrad.gradients import GradientRecorder
    from resgrad.models import build_model

    torch.manual_seed(0)
    model = build_model("plain", 8, width=2)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    with GradientRecorder(model, schedule=1) as rec:
        rec.begin_step(5)
        F.cross_entropy(model(x), y).backward()
        rec.end_step()
        buffer = rec.take_record(5)
        assert buffer is not None and rec.take_record(5) is None and rec.to_frame().empty
        base = buffer.clone()
        for step, scale in ((5, 1.0), (6, 2.0), (7, 3.0)):
            buffer.copy_(base * scale)  # the replay of step `step` writes the buffer
            rec.add_record(step, 1, buffer)
        buffer.zero_()  # a later replay: recorded steps keep their numbers
    frame = rec.to_frame()
    assert sorted(frame.step.unique()) == [5, 6, 7] and (frame.epoch == 1).all()
    by_step = {s: g.norm.to_numpy() for s, g in frame.groupby("step")}
    finite = np.isfinite(by_step[5])
    assert finite.any()
    np.testing.assert_array_equal(by_step[5][finite], base.double().numpy()[finite])
    np.testing.assert_array_equal(by_step[7][finite], (base * 3.0).double().numpy()[finite])
    # The record taken at capture holds the step's true norms: each replayed step has them times its scale.
    expected = autograd_norms(model, x, y, rec.layers, rec.blocks).array(rec.layers, rec.blocks)
    for step, scale in ((5, 1.0), (6, 2.0), (7, 3.0)):
        at = frame[frame.step == step].set_index(["quantity", "layer"]).norm
        got = [at["weight_grad", n] for n in rec.layers] + [at["activation_grad", n] for n in rec.blocks]
        np.testing.assert_allclose(got, scale * expected, rtol=1e-6)


# ---------------------------------------------------------------- bench


def test_bench_graphs_axis_applies_to_cuda_points_only() -> None:
    config = BenchConfig(
        devices=["cpu", "cuda"],
        archs=["plain", "residual"],
        depths=[8],
        modes=["train_step"],
        cuda_graphs=["off", "on"],
    ).validate()
    points = grid(config, ["cpu", "cuda"])
    assert [(p.device, p.cuda_graphs, p.arch) for p in points] == [
        ("cpu", False, "plain"),
        ("cpu", False, "residual"),  # the CPU point once, eager
        ("cuda", False, "plain"),
        ("cuda", False, "residual"),
        ("cuda", True, "plain"),
        ("cuda", True, "residual"),
    ]
    assert "--cuda-graphs off on" in config.command()
    with pytest.raises(UsageError, match="--compile or --cuda-graphs on, not both"):
        BenchConfig(devices=["cuda"], compile=True, cuda_graphs=["on"]).validate()
    with pytest.raises(UsageError, match="unknown cuda-graphs 'yes'"):
        BenchConfig(devices=["cuda"], cuda_graphs=["yes"]).validate()


@pytest.mark.usefixtures("small_peak_matmul")
def test_bench_cuda_graphs_flag_alone_means_both_side_by_side(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    argv = [
        "bench",
        "--devices",
        "cpu",
        "--archs",
        "residual",
        "--depths",
        "8",
        "--widths",
        "2",
        "--batch-sizes",
        "2",
        "--modes",
        "forward",
        "--min-run-time",
        "0.01",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert exit_code([*argv, "--cuda-graphs"]) == 0
    assert "--cuda-graphs off on" in (out / "bench.md").read_text()
    assert exit_code([*argv, "--cuda-graphs", "maybe"]) == 2
    assert "unknown cuda-graphs 'maybe'; allowed: off, on." in capsys.readouterr().err


@pytest.mark.usefixtures("small_peak_matmul")
def test_eager_vs_graphed_table_divides_matching_cuda_points(tmp_path: Path) -> None:
    tiny = dict(
        archs=["plain", "residual"],
        depths=[8],
        widths=[2],
        batch_sizes=[2],
        modes=["forward"],
        threads=1,
        min_run_time=0.01,
        warmup=1,
    )
    result = run_bench(BenchConfig(devices=["cpu"], cuda_graphs=["off", "on"], **tiny), progress=False)
    rows = result.rows
    assert len(rows) == 2 and "cuda_graphs" in rows.columns and not rows["cuda_graphs"].any()
    assert graphs_table(rows).empty  # no CUDA point: nothing to compare
    # No GPU here: CUDA rows made from the CPU rows, the graphed ones a quarter of the time, so the speedup is 4.
    eager = rows.assign(device="cuda")
    graphed = eager.assign(cuda_graphs=True, median_ms=eager["median_ms"] / 4)
    both = dataclasses.replace(result, rows=pd.concat([rows, eager, graphed], ignore_index=True))
    table = graphs_table(both.rows)
    assert len(table) == 2 and table["speedup"].to_numpy() == pytest.approx(4.0)
    assert "## Eager vs CUDA graphs" in bench_markdown(both)


# ---------------------------------------------------------------- on a GPU


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic kernels, so that the comparison is graph vs eager, not two draws of atomics."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


@CUDA
@pytest.mark.parametrize(
    "options",
    [
        dict(arch="residual", depth=20, norm="batch"),
        dict(arch="plain", depth=8, norm="none", dtype="bfloat16", channels_last=True),
    ],
)
def test_graphed_training_equals_eager_over_100_steps(options: dict, data_dir: Path, deterministic_cudnn) -> None:
    # 1000 images in batches of 64: every 16th step is an epoch's last batch of 40, which runs eagerly;
    # record_every 3 needs both graphs, the recorded one and the other.
    base = dict(
        width=8,
        steps=100,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        record_every=3,
        eval_every=50,
        train_subset=1000,
        test_subset=500,
        device="cuda",
        data_dir=str(data_dir),
        **options,
    )
    eager = train(TrainConfig(**base, cuda_graphs="off"), progress=False)
    graphed = train(TrainConfig(**base, cuda_graphs="on"), progress=False)
    assert eager.summary["cuda_graphs"] is False and graphed.summary["cuda_graphs"] is True
    assert graphed.status == eager.status == "complete"
    np.testing.assert_allclose(graphed.metrics.train_loss, eager.metrics.train_loss, rtol=1e-5)
    np.testing.assert_allclose(graphed.metrics.test_acc.dropna(), eager.metrics.test_acc.dropna(), rtol=1e-5)
    g, e = graphed.grad_norms, eager.grad_norms
    pd.testing.assert_frame_equal(g.drop(columns="norm"), e.drop(columns="norm"))  # same steps, layers, quantities
    assert sorted(g.step.unique()) == list(range(0, 100, 3))  # and 99, the last step, is one of them
    np.testing.assert_allclose(g.norm, e.norm, rtol=1e-5)


@CUDA
def test_graphed_step_replays_and_copies_each_recorded_step(data_dir: Path) -> None:
    from resgrad.cudagraph import WARMUP_STEPS, GraphedTrainStep
    from resgrad.data import load_split
    from resgrad.gradients import GradientRecorder
    from resgrad.models import build_model
    from resgrad.train import train_step

    device = torch.device("cuda")
    split = load_split(True, str(data_dir), 256, device)
    torch.manual_seed(0)
    model = build_model("residual", 8, 4).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    with GradientRecorder(model, schedule=2) as rec:
        graphed = GraphedTrainStep(
            lambda x, y, step, epoch: train_step(model, opt, x, y, rec, step, epoch),
            split.images,
            split.labels,
            32,
            rec,
        )
        losses = [graphed(torch.arange(32 * i, 32 * (i + 1)) % 256, i, 0).clone() for i in range(10)]
        frame = rec.to_frame()
    assert graphed.replays == 10 - WARMUP_STEPS
    assert sorted(frame.step.unique()) == [0, 2, 4, 6, 8]
    per_step = frame[frame.quantity == "weight_grad"].groupby("step").norm.apply(tuple)
    assert len(set(per_step)) == 5  # each recorded step kept its own numbers, not the buffer's last ones
    assert all(torch.isfinite(loss) for loss in losses)


@CUDA
def test_bench_times_a_graphed_point_beside_its_eager_twin(tmp_path: Path) -> None:
    config = BenchConfig(
        devices=["cuda"],
        archs=["residual"],
        depths=[8],
        widths=[4],
        batch_sizes=[16],
        modes=["forward", "train_step"],
        cuda_graphs=["off", "on"],
        min_run_time=0.05,
        warmup=1,
    )
    result = run_bench(config, progress=False)
    rows = result.rows
    assert len(rows) == 4 and (rows["status"] == "ok").all() and (rows["median_ms"] > 0).all()
    assert sorted(rows["cuda_graphs"]) == [False, False, True, True]
    assert len(graphs_table(rows)) == 2
