"""The report's backward gain per block (resgrad.report.gain, its figure and table) against hand computations."""

from __future__ import annotations

import base64
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resgrad.report.gain import _owner, block_gains, gain_table
from resgrad.report.page import make_report
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN, INF = math.nan, math.inf


def _grads(run_id: str, arch: str, step: int, signal: list[float], acts: dict[str, float]) -> list[dict]:
    """Rows as Sweep.grad_norms has them: blocks s.0, s.1, s.2 and the named activation modules."""
    rows = [
        dict(
            run_id=run_id, arch=arch, step=step, layer_index=i, layer=f"s.{i}", quantity="activation_grad", grad_norm=v
        )
        for i, v in enumerate(signal)
    ]
    rows += [
        dict(run_id=run_id, arch=arch, step=step, layer_index=i, layer=name, quantity="act_deriv", grad_norm=v)
        for i, (name, v) in enumerate(acts.items())
    ]
    rows.append(
        dict(run_id=run_id, arch=arch, step=step, layer_index=0, layer="stem", quantity="weight_grad", grad_norm=123.0)
    )  # another quantity: never mixed in
    return rows


def _acts(s1: tuple[float, float], s2: tuple[float, float]) -> dict[str, float]:
    # stem_act belongs to no block; s.0's activations have no gain (block 0's input is not recorded)
    return {
        "stem_act": 0.99,
        "s.0.act1": 0.98,
        "s.0.act2": 0.97,
        "s.1.act1": s1[0],
        "s.1.act2": s1[1],
        "s.2.act1": s2[0],
        "s.2.act2": s2[1],
    }


@pytest.fixture
def synthetic() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [
        *_grads("p", "plain", 0, [1.0, 4.0, 16.0], _acts((0.2, 0.3), (0.1, 0.5))),
        *_grads("p", "plain", 5, [0.0, 2.0, 0.0], _acts((0.5, 0.5), (0.0, 0.0))),
        *_grads("r", "residual", 0, [3.0, 2.0, 1.0], _acts((0.6, 0.8), (NAN, 0.4))),
        *_grads("r", "residual", 5, [NAN, 1.0, 1.0], _acts((0.1, 0.1), (0.2, 0.2))),
        *_grads("d", "residual", 0, [2.0, 1.0, 1.0], _acts((0.9, 0.9), (0.8, 0.8))),
        *_grads("d", "residual", 3, [1.0, 1.0, 1.0], _acts((0.3, 0.3), (0.3, 0.3))),
    ]
    runs = pd.DataFrame(
        {
            "run_id": ["p", "r", "d", "f"],
            "arch": ["plain", "residual", "residual", "plain"],
            "status": ["complete", "complete", "diverged", "failed"],
        }
    )
    return pd.DataFrame(rows), runs


def test_gain_per_block_and_the_blocks_mean_sigma_prime_by_hand(synthetic) -> None:
    grads, _ = synthetic
    got = block_gains(grads, ["run_id", "arch"]).set_index(["run_id", "step", "block_index"])
    assert list(got.columns) == ["arch", "block", "gain", "act_deriv"]
    expected = {  # gain_l = ‖∂L/∂h_{l-1}‖ / ‖∂L/∂h_l‖; act_deriv: mean of s.l.act1 and s.l.act2
        ("p", 0, 1): (1 / 4, 0.25),
        ("p", 0, 2): (4 / 16, 0.3),
        ("p", 5, 1): (0 / 2, 0.5),
        ("p", 5, 2): (INF, 0.0),  # 2 / 0
        ("r", 0, 1): (3 / 2, 0.7),
        ("r", 0, 2): (2 / 1, NAN),  # a NaN act_deriv makes the block's mean NaN
        ("r", 5, 1): (NAN, 0.1),
        ("r", 5, 2): (1.0, 0.2),
        ("d", 0, 1): (2.0, 0.9),
        ("d", 0, 2): (1.0, 0.8),
        ("d", 3, 1): (1.0, 0.3),
        ("d", 3, 2): (1.0, 0.3),
    }
    assert sorted(got.index) == sorted(expected)
    for key, (gain, deriv) in expected.items():
        np.testing.assert_equal(got.loc[key, "gain"], gain)
        assert got.loc[key, "act_deriv"] == pytest.approx(deriv, rel=1e-12, nan_ok=True)
    assert got.loc[("p", 0, 2), "block"] == "s.2"


def test_gain_table_takes_medians_at_the_first_and_last_step_by_hand(synthetic) -> None:
    grads, runs = synthetic
    table = gain_table(block_gains(grads, ["run_id", "arch"]), runs, ["arch"]).set_index("arch")
    plain, residual = table.loc["plain"], table.loc["residual"]
    assert (plain["n_runs"], plain["n_complete"], residual["n_runs"], residual["n_complete"]) == (1, 1, 2, 1)
    assert plain["median_block_gain_first"] == statistics.median([0.25, 0.25])
    assert plain["median_act_deriv_first"] == pytest.approx(statistics.median([0.25, 0.3]))
    assert plain["median_block_gain_last"] == INF  # median of 0 and inf
    assert plain["median_act_deriv_last"] == pytest.approx(statistics.median([0.5, 0.0]))
    # residual: first step of r and of the diverged d; last step of the complete r only
    assert residual["median_block_gain_first"] == statistics.median([1.5, 2.0, 2.0, 1.0])
    assert math.isnan(residual["median_act_deriv_first"])  # r's second block: NaN kept, not dropped
    assert (residual["n_blocks_first"], residual["n_blocks_last"]) == (4, 2)
    assert math.isnan(residual["median_block_gain_last"])
    assert residual["median_act_deriv_last"] == pytest.approx(statistics.median([0.1, 0.2]))


def test_an_activation_belongs_to_the_block_its_name_lies_in() -> None:
    blocks = {"stage1.1", "stage1.10", "block1"}
    assert _owner("stage1.10.act1", blocks) == "stage1.10"
    assert _owner("stage1.1.act2", blocks) == "stage1.1"
    assert _owner("block1.inner.act", blocks) == "block1"
    assert _owner("stem_act", blocks) is None and _owner("act1", blocks) is None


# ---------------------------------------------------------------- a tiny real sweep, read back by hand


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """plain and residual, depth 8, sigmoid and relu, width 4, one seed, 5 steps on 1000 images."""
    out = tmp_path_factory.mktemp("gain") / "sweep"
    spec = SweepSpec(
        grid={
            "arch": ["plain", "residual"],
            "depth": [8],
            "width": [4],
            "activation": ["sigmoid", "relu"],
            "seed": [0],
        },
        fixed=dict(
            steps=5, train_subset=1000, test_subset=200, record_every=2, threads=1, device="cpu", data_dir=str(data_dir)
        ),
    )
    assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete"] * 4
    make_report(out)
    return out


def _hand(run_dir: Path, when: str) -> tuple[list[float], list[float]]:
    """Gains of blocks 1.. and their activations' mean σ′ at the first or last recorded step, with plain Python."""
    g = pd.read_parquet(run_dir / "grad_norms.parquet")
    step = g["step"].min() if when == "first" else g["step"].max()
    at = g[g["step"] == step]
    signal = at[at["quantity"] == "activation_grad"].sort_values("layer_index")
    norms, names = list(signal["norm"]), list(signal["layer"])
    derivs = at[at["quantity"] == "act_deriv"]
    gains, sigmas = [], []
    for block in range(1, len(norms)):
        gains.append(norms[block - 1] / norms[block])
        mine = [v for name, v in zip(derivs["layer"], derivs["norm"]) if name.startswith(names[block] + ".")]
        assert len(mine) == 2  # act1 and act2 of the block
        sigmas.append(sum(mine) / len(mine))
    return gains, sigmas


@pytest.mark.slow
def test_report_gain_table_matches_a_hand_computation_from_the_run_folders(report_dir: Path) -> None:
    table = pd.read_csv(report_dir / "report" / "tables" / "block_gain.csv")
    assert list(table[["activation", "arch"]].itertuples(index=False, name=None)) == [
        ("sigmoid", "plain"),
        ("sigmoid", "residual"),
        ("relu", "plain"),
        ("relu", "residual"),
    ]
    for run_dir in sorted((report_dir / "runs").iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        row = table[(table["arch"] == config["arch"]) & (table["activation"] == config["activation"])].iloc[0]
        for when in ("first", "last"):
            gains, sigmas = _hand(run_dir, when)
            assert row[f"median_block_gain_{when}"] == pytest.approx(statistics.median(gains), rel=1e-9)
            assert row[f"median_act_deriv_{when}"] == pytest.approx(statistics.median(sigmas), rel=1e-9)
            assert row[f"n_blocks_{when}"] == 2
    sigmoid = table[table["activation"] == "sigmoid"]
    assert (sigmoid["median_act_deriv_first"] <= 0.25).all()  # σ′ never exceeds 1/4


@pytest.mark.slow
def test_report_has_the_gain_section_with_its_figure_and_table(report_dir: Path) -> None:
    out = report_dir / "report"
    assert (out / "figures" / "block_gain.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "report.md").read_text()
    section = md.split("## Backward gain per block", 1)[1].split("\n## ", 1)[0]
    assert "(figures/block_gain.png)" in section and "CSV: `tables/block_gain.csv`" in section
    assert "| sigmoid | plain | 8 | 1 |" in section
    html = (out / "report.html").read_text()
    png = base64.b64encode((out / "figures" / "block_gain.png").read_bytes()).decode("ascii")
    assert "<h2>Backward gain per block</h2>" in html and f'src="data:image/png;base64,{png}"' in html


@pytest.mark.slow
def test_runs_recorded_before_act_deriv_get_gains_and_no_sigma_prime(report_dir: Path) -> None:
    """Sweeps made before act_deriv existed: the gains are there, σ′ is NaN and its panels say so."""
    from resgrad.report.figures_grad import figure_block_gain
    from resgrad.report.gain import sweep_gain_table
    from resgrad.report.sweepdata import load_sweep

    sweep = load_sweep(report_dir)
    with_deriv = sweep_gain_table(sweep)
    sweep.grad_norms = sweep.grad_norms[sweep.grad_norms["quantity"] != "act_deriv"]
    table = sweep_gain_table(sweep)
    assert table["median_act_deriv_first"].isna().all() and table["median_act_deriv_last"].isna().all()
    pd.testing.assert_series_equal(table["median_block_gain_first"], with_deriv["median_block_gain_first"])
    fig, caption = figure_block_gain(sweep)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("no act_deriv recorded") == 2 * 2  # two activations x first and last step
    assert "tables/block_gain.csv" in caption
