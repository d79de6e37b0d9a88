"""The side-by-side benchmark scripts at toy sizes, so that `pytest benchmarks --benchmark-disable` keeps them working.

    pytest benchmarks/test_scripts.py --benchmark-disable     # each script's function once (CI)

The sizes here are far too small for the numbers to mean anything: the figures come
from running the scripts themselves (see their docstrings). The timing functions get
smoke tests (they run end to end and return a row of the promised shape; their ratios
are not recomputed here). What a script could get wrong without any timing showing it
is checked against an independent computation: the step that tutorial_vs_resgrad.py
times as "resgrad's step" trains exactly what `resgrad.train` trains.
The recorder-overhead script is covered in benchmarks/test_recorder.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from depth_sweep_floor import floor_seconds, time_parts
from depth_sweep_speed import run_comparison
from layout_accuracy import layout_errors
from sweep_scaling import run_scaling
from tutorial_vs_resgrad import BATCH, ResgradSteps, compare_bench, compare_end_to_end, compare_training

from resgrad.config import TrainConfig
from resgrad.data import load_split
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model
from resgrad.schedules import every
from resgrad.train import train

# Toy sizes on a shared machine: one torch thread here (sweep_scaling's runs use one each anyway).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_sweep_scaling_script_runs(benchmark, data_dir: Path) -> None:
    """`python benchmarks/sweep_scaling.py`: one grid with 1 and 2 local workers, same numbers from both."""
    row = benchmark.pedantic(
        run_scaling,
        kwargs=dict(
            steps=2,
            train_subset=64,
            test_subset=32,
            archs=("plain", "residual"),
            depths=(8,),
            widths=(4,),
            workers=(1, 2),
            data_dir=str(data_dir),
        ),
        rounds=1,
    )
    assert row["runs"] == 2 and row["steps"] == 2 and row["threads_per_run"] == 1
    for n in (1, 2):
        assert row[f"workers_{n}_wall_s"] > 0 and row[f"workers_{n}_run_mean_s"] > 0
    # The in-process sweep and the two-process one trained the same seeded runs: identical numbers.
    assert row["same_numbers"] is True


def test_the_timed_resgrad_step_trains_what_resgrad_train_trains(data_dir: Path) -> None:
    """Comparison 1 times "resgrad's step": from one seed, its weights after 6 steps (across an epoch's end,
    with the recorder on) are those of `resgrad train` with the tutorial's settings, bit for bit."""
    steps, images = 6, 256  # 4 steps an epoch
    config = TrainConfig(
        arch="seed-residual",
        batch_size=BATCH,
        lr=0.01,
        momentum=0.5,
        steps=steps,
        train_subset=images,
        test_subset=10,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    reference = train(config, progress=False).model_state
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("seed-residual")
    with GradientRecorder(model, every(10)) as rec:
        timed = ResgradSteps(load_split(True, str(data_dir), images, cpu), model, cpu, rec)
        timed.run(4)
        timed.run(steps - 4)  # kept across calls like one long run
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state[name], value), name
    assert not torch.equal(state["fc.weight"], build_model("seed-residual").state_dict()["fc.weight"])


def test_tutorial_vs_resgrad_training_step_runs(benchmark, data_dir: Path) -> None:
    """Smoke test of comparison 1 of `python benchmarks/tutorial_vs_resgrad.py`: the tutorial's loop against
    resgrad's step, one repeat of two steps each."""
    steps, repeats = 2, 1
    r = benchmark.pedantic(compare_training, args=(steps, repeats, torch.device("cpu"), str(data_dir), True), rounds=1)
    assert len(r["tutorial_runs"]) == len(r["resgrad_runs"]) == repeats
    assert r["tutorial_images_per_s"] > 0 and r["resgrad_images_per_s"] > 0 and r["ratio"] > 0
    benchmark.extra_info["images_per_s"] = r["resgrad_images_per_s"]


def test_tutorial_vs_resgrad_bench_against_hand_timer_runs(benchmark) -> None:
    """Smoke test of comparison 2: `resgrad bench`'s median for one point against a hand-written Timer."""
    r = benchmark.pedantic(compare_bench, args=("residual", 8, 2, 2, torch.device("cpu"), 0.01, 1), rounds=1)
    assert len(r["bench_runs"]) == len(r["hand_runs"]) == 1
    assert r["bench_ms"] > 0 and r["hand_ms"] > 0
    assert r["ratio"] == pytest.approx(r["bench_ms"] / r["hand_ms"])


@pytest.mark.slow
def test_tutorial_vs_resgrad_end_to_end_runs(benchmark, data_dir: Path) -> None:
    """Comparison 0: whole processes, the tutorial's script against `resgrad train`, on 256 training images."""
    r = benchmark.pedantic(compare_end_to_end, args=(1, 1, str(data_dir), 1, 256), rounds=1)
    assert set(r["seconds"]) == {"tutorial", "resgrad", "resgrad_batch_64"}
    assert all(len(v) == 1 and v[0] > 0 for v in r["seconds"].values())
    assert r["ratio"] == pytest.approx(r["median_s"]["tutorial"] / r["median_s"]["resgrad"])


@pytest.mark.slow
def test_depth_sweep_speed_script_runs(benchmark, data_dir: Path) -> None:
    """`python benchmarks/depth_sweep_speed.py` at toy size: the same grid by the code of a git ref and by today's."""
    flags = ["--archs", "plain", "residual", "--depths", "8", "--norms", "none", "--widths", "2", "--steps", "2"]
    flags += ["--train-subset", "64", "--test-subset", "32", "--record-every", "1", "--device", "cpu"]
    flags += ["--workers", "1", "--threads", "1"]
    r = benchmark.pedantic(
        run_comparison, kwargs=dict(before_ref="HEAD", flags=flags, data_dir=str(data_dir), committed=None), rounds=1
    )
    assert set(r["seconds"]) == {"before", "now"} and r["ratios"]["now"] > 0
    table = r["tables"]["now"]
    assert len(table) == 2 and (table.status_before == "complete").all() and (table.status_now == "complete").all()
    assert table.ok.all() and table.loc["residual"].d_ratio_first.notna().all()  # plain w2: a zero gradient (NaN)


@pytest.mark.parametrize("channels_last", [False, True])
def test_depth_sweep_floor_times_a_step_and_an_evaluation(data_dir: Path, channels_last: bool) -> None:
    """`python benchmarks/depth_sweep_floor.py` at toy size: seconds per step and per evaluation; the floor's sum."""
    cpu = torch.device("cpu")
    train_set, test_set = load_split(True, data_dir, 256, cpu), load_split(False, data_dir, 64, cpu)
    step, evaluation = time_parts("residual", 8, "batch", channels_last, train_set, test_set, steps=2, warmup=1)
    assert 0 < step < 10 and 0 < evaluation < 10
    assert floor_seconds({8: 6.0, 56: 50.0}) == (8 * 6.0 + 8 * 50.0) / 2  # 8 runs a depth on 2 workers


def test_layout_accuracy_measures_both_layouts_against_float64(data_dir: Path) -> None:
    """`python benchmarks/layout_accuracy.py` at toy size: one relative error per weighted layer and layout."""
    errors = layout_errors(TrainConfig(arch="plain", depth=8, width=2, norm="batch"), 8, str(data_dir))
    assert set(errors) == {"contiguous", "channels_last"}
    assert all(len(v) == 8 and all(0 <= e < 1 for e in v) for v in errors.values())  # 7 convs and fc
