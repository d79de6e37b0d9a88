"""The report's "Theory and measurement" section on a tiny real sweep, its table against a hand computation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

from resgrad.models import build_model
from resgrad.report.page import _Page, make_report
from resgrad.report.sweepdata import load_sweep
from resgrad.report.theory_page import FIGURES, theory_section
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 6


def _fixed(data_dir: Path) -> dict[str, object]:
    return dict(
        steps=STEPS, train_subset=1000, test_subset=200, record_every=2, threads=1, device="cpu", data_dir=str(data_dir)
    )


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """plain and residual, ReLU and sigmoid, depth 14 (identity and option-A stride-2 blocks), width 4: 4 runs."""
    out = tmp_path_factory.mktemp("theory") / "sweep"
    spec = SweepSpec(
        grid={
            "arch": ["plain", "residual"],
            "depth": [14],
            "width": [4],
            "activation": ["relu", "sigmoid"],
            "seed": [0],
        },
        fixed=_fixed(data_dir),
    )
    assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete"] * 4
    make_report(out)
    return out


# ---------------------------------------------------------------- the prediction by hand, from the run folder


def _coverage(k: int, stride: int, size: int) -> list[float]:
    """Share of output positions where tap d reads a real pixel (padding k // 2), counted one by one."""
    pad = k // 2
    out = (size + 2 * pad - k) // stride + 1
    return [sum(0 <= q * stride + d - pad < size for q in range(out)) / out for d in range(k)]


def _border(w: torch.Tensor, stride: int, size: int) -> float:
    c = _coverage(w.shape[-1], stride, size)
    energy = (w.double() ** 2).sum(dim=(0, 1))
    total = sum(float(energy[y, x]) * c[y] * c[x] for y in range(len(c)) for x in range(len(c)))
    return total / float(energy.sum())


def _hand_ratios(run_dir: Path, when: str) -> list[float]:
    """Measured/predicted gain of blocks 1.. at the first or last recorded step, from the run folder's files."""
    config = json.loads((run_dir / "config.json").read_text())
    torch.manual_seed(config["seed"])  # as resgrad train draws the initial weights
    start = build_model(config["arch"], depth=14, width=4, activation=config["activation"]).state_dict()
    end = torch.load(run_dir / "model.pt", weights_only=True)  # after update STEPS - 1
    g = pd.read_parquet(run_dir / "grad_norms.parquet")
    step = int(g["step"].min() if when == "first" else g["step"].max())
    at = g[g["step"] == step]

    def value(quantity: str, layer: str) -> float:
        return float(at[(at["quantity"] == quantity) & (at["layer"] == layer)]["norm"].iloc[0])

    def a(layer: str, stride: int, size: int) -> float:  # (1/C_out) ‖W‖² b, b interpolated from step 0 to STEPS
        b0, b1 = _border(start[f"{layer}.weight"], stride, size), _border(end[f"{layer}.weight"], stride, size)
        b = b0 + (b1 - b0) * step / STEPS
        return value("weight_norm", layer) ** 2 * b / start[f"{layer}.weight"].shape[0]

    signal = at[at["quantity"] == "activation_grad"].sort_values("layer_index")
    norms, names = list(signal["norm"]), list(signal["layer"])
    ratios = []
    for block in range(1, len(names)):
        name = names[block]
        stage, index = int(name[5]), int(name.split(".")[1])
        size = {1: 28, 2: 14, 3: 7}[stage]
        down = stage > 1 and index == 0
        a1 = a(f"{name}.conv1", 2 if down else 1, 2 * size if down else size)
        a2 = a(f"{name}.conv2", 1, size)
        e1, e2 = value("act_deriv_sq", f"{name}.act1"), value("act_deriv_sq", f"{name}.act2")
        if config["arch"] == "plain":
            g2 = e2 * a2 * e1 * a1
        else:
            g2 = e2 * ((0.5 if down else 1.0) + a2 * e1 * a1)  # option A: C_in/C_out = 1/2 on the stride-2 blocks
        ratios.append((norms[block - 1] / norms[block]) / math.sqrt(g2))
    return ratios


@pytest.mark.slow
def test_gain_vs_theory_table_matches_a_hand_computation_from_the_run_folders(sweep_dir: Path) -> None:
    table = pd.read_csv(sweep_dir / "report" / "tables" / "gain_vs_theory.csv")
    assert len(table) == 8  # 2 archs x 2 activations x (first, last)
    for run_dir in sorted((sweep_dir / "runs").iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        for when, step in (("first", 0), ("last", STEPS - 1)):
            row = table[
                (table["arch"] == config["arch"])
                & (table["activation"] == config["activation"])
                & (table["when"] == when)
            ].iloc[0]
            ratios = _hand_ratios(run_dir, when)
            assert row["step"] == step and row["n_blocks"] == row["n_compared"] == 5 and row["n_underflow"] == 0
            assert row["n_approx"] == (2 if config["arch"] == "residual" else 0)
            assert row["median_ratio"] == pytest.approx(statistics.median(ratios), rel=1e-9)
            assert row["min_ratio"] == pytest.approx(min(ratios), rel=1e-9)
            assert row["max_ratio"] == pytest.approx(max(ratios), rel=1e-9)
            exact = [r for i, r in enumerate(ratios, 1) if config["arch"] == "plain" or i not in (2, 4)]
            assert row["median_ratio_exact"] == pytest.approx(statistics.median(exact), rel=1e-9)


@pytest.mark.slow
def test_report_has_the_theory_section_with_its_figures_and_tables(sweep_dir: Path) -> None:
    out = sweep_dir / "report"
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(PNG_MAGIC), name
    taps = pd.read_csv(out / "tables" / "theory_tap_shape.csv")
    assert len(taps) == 4 and (taps["n_layers"] == 14).all()  # one run each: the stem, 12 convs and fc
    md = (out / "report.md").read_text()
    section = md.split("## Theory and measurement", 1)[1].split("\n## ", 1)[0]
    for name in FIGURES:
        assert f"(figures/{name}.png)" in section
    assert "CSV: `tables/gain_vs_theory.csv`" in section and "At the first recorded step" in section
    assert "| relu | plain | 14 | first (0) | 5 of 5 |" in section
    assert "<h2>Theory and measurement</h2>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_runs_recorded_before_weight_norm_and_act_deriv_sq_leave_the_section_saying_so(sweep_dir: Path) -> None:
    sweep = load_sweep(sweep_dir)
    sweep.grad_norms = sweep.grad_norms[~sweep.grad_norms["quantity"].isin(["weight_norm", "act_deriv_sq"])]
    page, tables = _Page("t"), {}
    assert theory_section(page, sweep, tables, 1) == [] and tables == {}
    text = page.markdown()
    assert "cannot be made" in text and "recorded before resgrad recorded weight_norm and act_deriv_sq" in text


@pytest.mark.slow
def test_batch_norm_runs_are_left_out_with_the_reason(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "bn"
    spec = SweepSpec(
        grid={"arch": ["plain"], "depth": [8], "width": [4], "norm": ["batch"], "seed": [0]}, fixed=_fixed(data_dir)
    )
    assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete"]
    report = make_report(out)
    section = report.markdown.read_text().split("## Theory and measurement", 1)[1].split("\n## ", 1)[0]
    assert "cannot be made" in section and "batch norm" in section and "batch variance" in section
    assert not (out / "report" / "tables" / "gain_vs_theory.csv").exists()
