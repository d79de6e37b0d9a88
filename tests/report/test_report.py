"""`resgrad report` and resgrad.report on a small real sweep (real MNIST, tiny nets, a few dozen steps).

Expected table values are computed here from the run folders with plain pandas/json/math,
independently of resgrad.report.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import leftovers, one_sentence, rerecord, run_cli, snapshot

import resgrad.report.page
from resgrad.cli import main
from resgrad.report.markdown import markdown_table
from resgrad.report.sweepdata import load_sweep
from resgrad.report.tables import acc_by_eval_display, headline_table, summary_display, summary_table
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

FIGURES = [
    "weight_grad_by_layer",
    "activation_grad_by_block",
    "grad_norm_over_steps",
    "train_loss",
    "test_acc_over_steps",
    "test_error_vs_depth",
    "block_gain",
    "gain_vs_theory",
    "signal_vs_theory",
    "theory_ratio_over_steps",
]  # block_gain: its own section (test_report_gain.py); the theory section's three (test_report_theory.py)
TABLES = ["by_arch_depth", "headline", "test_acc_by_eval", "runs", "block_gain", "gain_vs_theory", "theory_tap_shape"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fixed(data_dir: Path, **kw: object) -> dict[str, object]:
    base = dict(
        steps=30,
        train_subset=512,
        test_subset=500,
        record_every=5,
        eval_every=5,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    return {**base, **kw}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """plain and residual, depths 8 and 14, width 4, seeds 0 and 1: 8 real runs of 30 steps."""
    out = tmp_path_factory.mktemp("sweep") / "depth"
    spec = SweepSpec(
        grid={"arch": ["plain", "residual"], "depth": [8, 14], "width": [4], "seed": [0, 1]}, fixed=_fixed(data_dir)
    )
    summary = run_sweep(spec, out, progress=False)
    assert list(summary["status"]) == ["complete"] * 8
    return out


def _report(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["report", *argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> tuple[Path, str]:
    """`resgrad report SWEEP_DIR` run once: the report folder and what it printed."""
    code, stdout = _report([str(sweep_dir)])
    assert code == 0
    return sweep_dir / "report", stdout


def _copy(sweep_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep_dir, dst, ignore=shutil.ignore_patterns("report"))
    return dst


def _record_files(run_dir: Path) -> None:
    """Rewrite the records of files after a test edited them, as if the run had written them so.

    summary.json records every other file; the manifest (.resgrad.json) every file, summary.json too.
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(run_dir.iterdir())
        if p.name not in ("summary.json", ".resgrad.json")
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rerecord(run_dir)


def _make_failed(run_dir: Path, error: str) -> None:
    """Turn a run folder into what a sweep leaves for a run that raised: config.json and summary.json only."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in run_dir.iterdir():
        if name.name != "config.json":
            name.unlink()
    summary.update(
        status="failed",
        error=error,
        final_test_acc=None,
        final_test_loss=None,
        final_train_loss=None,
        steps=None,
        images_per_s=None,
    )
    summary.pop("files", None)  # a failed run's folder has no record
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _make_diverged(run_dir: Path, at_step: int) -> None:
    """Turn a complete run into what a run that diverged at ``at_step`` leaves: records up to there, NaN at the end."""
    summary = json.loads((run_dir / "summary.json").read_text())
    m = pd.read_csv(run_dir / "metrics.csv")
    m = m[m["step"] <= at_step].copy()
    m.loc[m["step"] == at_step, "train_loss"] = math.nan
    m.to_csv(run_dir / "metrics.csv", index=False)
    g = pd.read_parquet(run_dir / "grad_norms.parquet")
    g = g[g["step"] <= at_step].copy()
    g.loc[g["step"] == g["step"].max(), "norm"] = math.nan
    g.to_parquet(run_dir / "grad_norms.parquet", index=False)
    summary.update(
        status="diverged",
        diverged_at_step=at_step,
        steps=at_step + 1,
        final_test_acc=None,
        final_test_loss=None,
        final_train_loss=None,
    )
    (run_dir / "summary.json").write_text(json.dumps(summary))
    _record_files(run_dir)


def _run_dir(sweep: Path, arch: str, depth: int, seed: int) -> Path:
    (found,) = (sweep / "runs").glob(f"{arch}-d{depth}-w4-s{seed}-*")
    return found


# ---------------------------------------------------------------- an independent computation from the run folders


def _log10_ratio(norms: pd.Series) -> float:
    """log10(first layer / last layer) by hand, with the IEEE results for zero and non-finite norms."""
    first, last = float(norms.loc[norms.index.min()]), float(norms.loc[norms.index.max()])
    if math.isnan(first) or math.isnan(last) or (math.isinf(first) and math.isinf(last)) or first == last == 0:
        return math.nan
    if first == 0 or math.isinf(last):
        return -math.inf
    if last == 0 or math.isinf(first):
        return math.inf
    return math.log10(first / last)


def _hand_runs(sweep: Path) -> pd.DataFrame:
    rows = []
    for run_dir in sorted((sweep / "runs").iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary["status"] not in ("complete", "diverged"):
            continue
        grads = pd.read_parquet(run_dir / "grad_norms.parquet")
        w = grads[grads["quantity"] == "weight_grad"]
        metrics = pd.read_csv(run_dir / "metrics.csv")
        hit = metrics[metrics["test_acc"] >= 0.9]
        rows.append(
            {
                "arch": config["arch"],
                "depth": config["depth"],
                "seed": config["seed"],
                "status": summary["status"],
                "acc": summary["final_test_acc"],
                "train_loss": summary["final_train_loss"],
                "first": _log10_ratio(w[w["step"] == w["step"].min()].set_index("layer_index")["norm"]),
                "last": _log10_ratio(w[w["step"] == w["step"].max()].set_index("layer_index")["norm"]),
                "updates_to_90": int(hit["step"].iloc[0]) + 1 if len(hit) else None,
            }
        )
    return pd.DataFrame(rows)


def _same(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- the report


@pytest.mark.slow
def test_report_writes_every_figure_and_table(report: tuple[Path, str]) -> None:
    out, stdout = report
    for name in FIGURES:
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
    for name in TABLES:
        assert len(pd.read_csv(out / "tables" / f"{name}.csv")) > 0, name
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"(figures/{name}.png)" in md
    assert "## Per arch and depth" in md and "## Runs" in md
    # The printed output: where the HTML is, and the headline table.
    assert f"report: {out / 'report.html'}" in stdout
    assert "| depth | plain test acc (%) | residual test acc (%) |" in stdout


@pytest.mark.slow
def test_html_is_self_contained_with_every_figure_embedded(report: tuple[Path, str]) -> None:
    out, _ = report
    page = (out / "report.html").read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == len(FIGURES)
    for chunk, name in zip(images, FIGURES):
        assert base64.b64decode(chunk.split('"', 1)[0]) == (out / "figures" / f"{name}.png").read_bytes()
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]*"', "", page)  # base64 may spell "http" by chance
    assert "http" not in text and "href=" not in text and page.count("src=") == len(FIGURES)
    assert (
        page.count("<table>") == 6
    )  # headline, per arch and depth, gain per block, measured/predicted gain, test accuracy per evaluation, runs


@pytest.mark.slow
def test_tables_match_a_hand_computation_from_the_run_folders(sweep_dir: Path, report: tuple[Path, str]) -> None:
    out, _ = report
    hand = _hand_runs(sweep_dir)
    table = pd.read_csv(out / "tables" / "by_arch_depth.csv")
    assert len(table) == 4
    for _, row in table.iterrows():
        runs = hand[(hand["arch"] == row["arch"]) & (hand["depth"] == row["depth"])]
        counts = (row["n_runs"], row["n_complete"], row["n_diverged"], row["n_failed"], row["n_missing"])
        assert counts == (2, 2, 0, 0, 0)
        for col, hand_col in (
            ("final_test_acc", "acc"),
            ("final_train_loss", "train_loss"),
            ("log10_grad_ratio_first", "first"),
            ("log10_grad_ratio_last", "last"),
        ):
            values = list(runs[hand_col])
            assert _same(row[f"{col}_mean"], statistics.mean(values)), col
            assert _same(row[f"{col}_std"], statistics.stdev(values)), col
        assert row["n_reached_90pct_acc"] == runs["updates_to_90"].notna().sum()
    # The headline: plain vs residual side by side per depth.
    headline = pd.read_csv(out / "tables" / "headline.csv")
    assert list(headline["depth"]) == [8, 14]
    for _, row in headline.iterrows():
        for arch in ("plain", "residual"):
            runs = hand[(hand["arch"] == arch) & (hand["depth"] == row["depth"])]
            assert _same(row[f"{arch}_test_acc"], statistics.mean(runs["acc"]))
            assert _same(row[f"{arch}_log10_grad_ratio_first"], statistics.mean(runs["first"]))
            assert _same(row[f"{arch}_log10_grad_ratio_last"], statistics.mean(runs["last"]))


@pytest.mark.slow
def test_load_sweep_gives_one_row_per_grid_point_and_tidy_frames(sweep_dir: Path) -> None:
    sweep = load_sweep(sweep_dir)
    assert len(sweep.runs) == 8 and set(sweep.runs["status"]) == {"complete"}
    assert sorted(sweep.runs["run_id"]) == sorted(p.name for p in (sweep_dir / "runs").iterdir())
    run_dir = _run_dir(sweep_dir, "residual", 14, 1)
    mine = sweep.grad_norms[sweep.grad_norms["run_id"] == run_dir.name]
    raw = pd.read_parquet(run_dir / "grad_norms.parquet")
    assert list(mine["grad_norm"]) == list(raw["norm"])
    assert set(mine["arch"]) == {"residual"} and set(mine["depth"]) == {14} and set(mine["norm"]) == {"none"}
    metrics = sweep.metrics[sweep.metrics["run_id"] == run_dir.name]
    assert list(metrics["train_loss"]) == list(pd.read_csv(run_dir / "metrics.csv")["train_loss"])


@pytest.mark.slow
def test_zero_and_nonfinite_norms_survive_into_tables_and_captions(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    plain = _run_dir(sweep, "plain", 8, 0)
    g = pd.read_parquet(plain / "grad_norms.parquet")
    w = (g["quantity"] == "weight_grad") & (g["layer_index"] == 0)
    g.loc[w & (g["step"] == g["step"].min()), "norm"] = 0.0  # first step: first layer zero -> -inf
    g.loc[w & (g["step"] == g["step"].max()), "norm"] = math.inf  # last step: first layer inf -> inf
    g.to_parquet(plain / "grad_norms.parquet", index=False)
    _record_files(plain)
    residual = _run_dir(sweep, "residual", 8, 0)
    g = pd.read_parquet(residual / "grad_norms.parquet")
    g.loc[(g["quantity"] == "weight_grad") & (g["layer_index"] == 0) & (g["step"] == 0), "norm"] = math.nan
    g.to_parquet(residual / "grad_norms.parquet", index=False)
    _record_files(residual)

    code, stdout = _report([str(sweep)])
    assert code == 0
    hand = _hand_runs(sweep)
    table = pd.read_csv(sweep / "report" / "tables" / "by_arch_depth.csv").set_index(["arch", "depth"])
    assert table.loc[("plain", 8), "log10_grad_ratio_first_mean"] == -math.inf
    assert table.loc[("plain", 8), "log10_grad_ratio_last_mean"] == math.inf
    assert math.isnan(table.loc[("plain", 8), "log10_grad_ratio_first_std"])
    assert math.isnan(table.loc[("residual", 8), "log10_grad_ratio_first_mean"])
    first = hand.set_index(["arch", "depth", "seed"])["first"]
    assert first[("plain", 8, 0)] == -math.inf and math.isnan(first[("residual", 8, 0)])  # the hand rule agrees
    runs = pd.read_csv(sweep / "report" / "tables" / "runs.csv").set_index("run_id")
    assert runs.loc[plain.name, "log10_grad_ratio_first"] == -math.inf
    assert runs.loc[plain.name, "log10_grad_ratio_last"] == math.inf
    headline_row = next(line for line in stdout.splitlines() if line.startswith("| 8 |"))  # printed by the CLI
    assert "-inf" in headline_row and "NaN" in headline_row

    md = (sweep / "report" / "report.md").read_text()
    by_depth = md.split("## Per arch and depth", 1)[1].split("##", 1)[0]
    plain_8 = next(line for line in by_depth.splitlines() if line.startswith("| plain | 8 |"))
    assert "| -inf ± NaN | inf ± NaN |" in plain_8
    # Figure 1 (first and last step per layer) shows each bad norm once, and its caption counts them.
    caption = md.split("### 1.", 1)[1].split("### 2.", 1)[0]
    assert "1 zero (▼" in caption and "1 infinite (▲" in caption and "1 NaN (✕" in caption
    caption = md.split("### 3.", 1)[1].split("### 4.", 1)[0]  # over steps: the first layer is one of the three
    assert "1 zero (▼" in caption and "1 infinite (▲" in caption and "1 NaN (✕" in caption


@pytest.mark.slow
def test_updates_to_90pct_acc_count_from_the_first_evaluation_at_or_above_90pct(
    sweep_dir: Path, tmp_path: Path
) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    for arch, seed, nth_eval in (("plain", 0, 2), ("plain", 1, 4), ("residual", 1, 0)):
        path = _run_dir(sweep, arch, 8, seed) / "metrics.csv"
        m = pd.read_csv(path)
        evals = m.index[m["test_acc"].notna()]
        m.loc[evals[nth_eval:], "test_acc"] = 0.95  # reaches 90 % at that evaluation and stays there
        m.loc[evals[nth_eval + 1], "test_acc"] = 0.9  # exactly 90 % counts too (>=), but is later
        m.to_csv(path, index=False)
        _record_files(path.parent)
    hand = _hand_runs(sweep)
    table = summary_table(load_sweep(sweep)).set_index(["arch", "depth"])
    expected = list(hand[(hand["arch"] == "plain") & (hand["depth"] == 8)]["updates_to_90"])
    assert expected == [15, 25]  # evaluations after steps 4, 9, 14, ...: step 14 is the 3rd
    assert table.loc[("plain", 8), "updates_to_90pct_acc_mean"] == statistics.mean(expected)
    assert table.loc[("plain", 8), "updates_to_90pct_acc_std"] == pytest.approx(statistics.stdev(expected))
    assert table.loc[("plain", 8), "n_reached_90pct_acc"] == 2
    assert table.loc[("residual", 8), "updates_to_90pct_acc_mean"] == 5
    assert table.loc[("residual", 8), "n_reached_90pct_acc"] == 1
    shown = summary_display(table.reset_index(), []).set_index(["arch", "depth"])["updates to 90 % acc"]
    assert shown[("plain", "8")] == "20 ± 7"
    assert shown[("residual", "8")] == "5 (1 of 2 reached)"
    assert shown[("plain", "14")] == "not reached"


@pytest.mark.slow
def test_partial_sweep_lists_missing_and_failed_runs(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    missing = _run_dir(sweep, "residual", 14, 1)
    shutil.rmtree(missing)
    failed = _run_dir(sweep, "plain", 14, 1)
    _make_failed(failed, "RuntimeError: out of memory in the test")

    out = tmp_path / "rep"
    out.mkdir()  # an empty folder is fine for --out
    code, _ = _report([str(sweep), "--out", str(out)])
    assert code == 0 and not (sweep / "report").exists()
    runs = pd.read_csv(out / "tables" / "runs.csv").set_index("run_id")
    assert runs.loc[missing.name, "status"] == "missing" and runs.loc[failed.name, "status"] == "failed"
    assert len(runs) == 8
    table = pd.read_csv(out / "tables" / "by_arch_depth.csv").set_index(["arch", "depth"])
    assert table.loc[("residual", 14), ["n_complete", "n_missing"]].tolist() == [1, 1]
    assert table.loc[("plain", 14), ["n_complete", "n_failed"]].tolist() == [1, 1]
    # With one run left, the mean is that run's value and the spread is NaN.
    hand = _hand_runs(sweep)
    left = hand[(hand["arch"] == "plain") & (hand["depth"] == 14) & (hand["seed"] == 0)].iloc[0]
    assert table.loc[("plain", 14), "final_test_acc_mean"] == pytest.approx(left["acc"])
    assert math.isnan(table.loc[("plain", 14), "final_test_acc_std"])
    md = (out / "report.md").read_text()
    assert "RuntimeError: out of memory in the test" in md and "| missing |" in md
    assert "0 diverged runs (✕ at the top edge, no test error), 1 failed, 1 missing" in md
    assert "Not drawn: 0 diverged, 1 failed, 1 missing runs." in md  # the test-accuracy figure
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_one_arch_one_seed(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    spec = json.loads((sweep / "sweep.json").read_text())
    spec["grid"].update(arch=["residual"], seed=[0])  # a sub-grid of the runs present: extra folders are ignored
    (sweep / "sweep.json").write_text(json.dumps(spec))
    code, stdout = _report([str(sweep)])
    assert code == 0
    headline = pd.read_csv(sweep / "report" / "tables" / "headline.csv")
    assert list(headline.columns) == [
        "depth",
        "residual_test_acc",
        "residual_log10_grad_ratio_first",
        "residual_log10_grad_ratio_last",
    ]
    assert "plain" not in stdout
    runs = pd.read_csv(sweep / "report" / "tables" / "runs.csv")
    assert len(runs) == 2 and set(runs["seed"]) == {0}
    hand = _hand_runs(sweep).set_index(["arch", "depth", "seed"])
    for _, row in headline.iterrows():
        assert row["residual_test_acc"] == pytest.approx(hand.loc[("residual", row["depth"], 0), "acc"])
    assert "one seed per point" in (sweep / "report" / "report.md").read_text()


@pytest.mark.slow
def test_diverged_run_counts_as_finished_without_accuracy(tmp_path: Path, data_dir: Path) -> None:
    spec = SweepSpec(
        grid={"arch": ["residual"], "depth": [8], "width": [2], "lr": [1000.0], "seed": [0]},
        fixed=_fixed(data_dir, steps=12, train_subset=256, test_subset=100, record_every=2, eval_every=4, momentum=0.9),
    )
    summary = run_sweep(spec, tmp_path / "sweep", progress=False)
    assert list(summary["status"]) == ["diverged"]
    code, _ = _report([str(tmp_path / "sweep")])
    assert code == 0
    table = pd.read_csv(tmp_path / "sweep" / "report" / "tables" / "by_arch_depth.csv")
    assert table.loc[0, "n_diverged"] == 1 and math.isnan(table.loc[0, "final_test_acc_mean"])
    md = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "diverged at step" in md and "1 diverged runs" in md


@pytest.mark.slow
def test_a_diverged_seed_leaves_last_step_numbers_to_the_complete_runs(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    _make_diverged(_run_dir(sweep, "plain", 8, 1), at_step=12)
    code, _ = _report([str(sweep)])
    assert code == 0
    hand = _hand_runs(sweep)
    runs = hand[(hand["arch"] == "plain") & (hand["depth"] == 8)]
    done = runs[runs["status"] == "complete"].iloc[0]
    assert math.isnan(runs[runs["status"] == "diverged"]["last"].iloc[0])  # its last record is NaN
    row = pd.read_csv(sweep / "report" / "tables" / "by_arch_depth.csv").set_index(["arch", "depth"]).loc[("plain", 8)]
    assert (row["n_complete"], row["n_diverged"]) == (1, 1)
    # Step 0 is the same moment in every run: both seeds count.
    assert _same(row["log10_grad_ratio_first_mean"], statistics.mean(runs["first"]))
    assert _same(row["log10_grad_ratio_first_std"], statistics.stdev(runs["first"]))
    # The last recorded step, accuracy and loss: the complete run alone, not NaN.
    assert _same(row["log10_grad_ratio_last_mean"], done["last"]) and math.isnan(row["log10_grad_ratio_last_std"])
    assert _same(row["final_test_acc_mean"], done["acc"]) and _same(row["final_train_loss_mean"], done["train_loss"])
    headline = pd.read_csv(sweep / "report" / "tables" / "headline.csv").set_index("depth")
    assert _same(headline.loc[8, "plain_log10_grad_ratio_last"], done["last"])
    md = (sweep / "report" / "report.md").read_text()
    by_depth = md.split("## Per arch and depth", 1)[1].split("##", 1)[0]
    cells = next(line for line in by_depth.splitlines() if line.startswith("| plain | 8 |")).split(" | ")
    assert "±" in cells[4] and cells[5] == f"{done['last']:.2f}"  # first step: two runs; last step: one
    assert "1 diverged runs left out there" in md.split("### 1.", 1)[1].split("### 2.", 1)[0]


def _hand_test_acc(sweep: Path) -> pd.DataFrame:
    """Every evaluation of every complete run, read from its metrics.csv."""
    frames = []
    for run_dir in sorted((sweep / "runs").iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        if json.loads((run_dir / "summary.json").read_text())["status"] != "complete":
            continue
        m = pd.read_csv(run_dir / "metrics.csv")
        frames.append(m[m["test_acc"].notna()].assign(arch=config["arch"], depth=config["depth"]))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
def test_test_accuracy_per_evaluation_matches_the_metrics_files(sweep_dir: Path, report: tuple[Path, str]) -> None:
    out, _ = report
    table = pd.read_csv(out / "tables" / "test_acc_by_eval.csv")
    assert list(table.columns) == ["arch", "depth", "step", "epoch", "test_acc_mean", "test_acc_std", "n_runs"]
    hand = _hand_test_acc(sweep_dir)
    groups = hand.groupby(["arch", "depth", "step"])
    assert len(table) == len(groups) == 4 * 6  # 30 steps, an evaluation every 5
    for _, row in table.iterrows():
        values = list(groups.get_group((row["arch"], row["depth"], row["step"]))["test_acc"])
        assert row["n_runs"] == len(values) == 2
        assert _same(row["test_acc_mean"], statistics.mean(values))
        assert _same(row["test_acc_std"], statistics.stdev(values))
    md = (out / "report.md").read_text()
    section = md.split("## Test accuracy during training", 1)[1].split("\n## ", 1)[0]
    heads = " | ".join(f"{n} updates" for n in (5, 10, 15, 20, 25, 30))
    assert f"| arch | depth | runs | {heads} |" in section
    last = list(groups.get_group(("plain", 8, 29))["test_acc"])
    row = next(line for line in section.splitlines() if line.startswith("| plain | 8 |"))
    expected = f"{100 * statistics.mean(last):.2f} ± {100 * statistics.stdev(last):.2f}"
    assert row.endswith(f"| {expected} |")


@pytest.mark.slow
def test_many_evaluations_give_the_csv_and_the_figure_but_no_markdown_table(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    for metrics in (sweep / "runs").glob("*/metrics.csv"):
        m = pd.read_csv(metrics)
        m["test_acc"] = 0.5 + m["step"] / 100  # an evaluation at every one of the 30 steps
        m.to_csv(metrics, index=False)
        _record_files(metrics.parent)
    code, _ = _report([str(sweep)])
    assert code == 0
    out = sweep / "report"
    assert len(pd.read_csv(out / "tables" / "test_acc_by_eval.csv")) == 4 * 30
    section = (out / "report.md").read_text().split("## Test accuracy during training", 1)[1].split("\n## ", 1)[0]
    assert "30 evaluations per run" in section and "|" not in section
    assert (out / "report.html").read_text().count("<table>") == 5  # all but the test accuracy per evaluation
    assert (out / "figures" / "test_acc_over_steps.png").read_bytes().startswith(PNG_MAGIC)


def test_evaluations_at_epoch_ends_are_headed_by_epoch() -> None:
    table = pd.DataFrame(
        {
            "arch": ["residual", "residual"],
            "depth": [8, 8],
            "step": [3, 7],
            "epoch": [0, 1],
            "test_acc_mean": [0.5, 0.75],
            "test_acc_std": [0.1, math.nan],
            "n_runs": [2, 1],
        }
    )
    shown = acc_by_eval_display(table, [], per_epoch=4)
    assert list(shown.columns) == ["arch", "depth", "runs", "epoch 1", "epoch 2"]
    assert shown.iloc[0].tolist() == ["residual", "8", "2", "50.00 ± 10.00", "75.00"]
    mid = acc_by_eval_display(table.assign(step=[3, 5]), [], per_epoch=4)  # the second one is mid-epoch
    assert list(mid.columns)[3:] == ["4 updates", "6 updates"]


@pytest.mark.slow
def test_a_new_report_replaces_the_earlier_one_whole_and_a_crash_leaves_it_as_it_was(
    sweep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    assert _report([str(sweep)])[0] == 0
    out = sweep / "report"
    # A report of an older version: no manifest, and a figure this version does not make, which its report.md names.
    (out / ".resgrad.json").unlink()
    (out / "figures" / "from_an_old_version.png").write_bytes(PNG_MAGIC)
    with open(out / "report.md", "a") as f:
        f.write("\n![old](figures/from_an_old_version.png)\n")
    assert _report([str(sweep)])[0] == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{name}.png" for name in FIGURES)
    assert sorted(p.name for p in (out / "tables").iterdir()) == sorted(f"{name}.csv" for name in TABLES)

    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    shutil.rmtree(_run_dir(sweep, "residual", 14, 1))  # the next report would differ everywhere

    def disk_full(path: Path, frame: pd.DataFrame) -> None:  # fails after the figures are written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resgrad.report.page, "_write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        resgrad.report.page.make_report(sweep)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in sweep.iterdir() if p.name.startswith(".resgrad-")]  # no temp folder left


# ---------------------------------------------------------------- bad input


@pytest.mark.slow
def test_a_folder_that_is_not_a_sweep_exits_2_and_writes_nothing(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _copy(sweep_dir, tmp_path) / "runs"
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["report", str(run_dir)]) == 2
    assert "resgrad report: error:" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_a_sweep_with_no_finished_run_exits_2_and_writes_nothing(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "empty"
    (sweep / "runs").mkdir(parents=True)
    shutil.copy(sweep_dir / "sweep.json", sweep / "sweep.json")
    source = _run_dir(sweep_dir, "plain", 8, 0)
    shutil.copytree(source, sweep / "runs" / source.name)
    _make_failed(sweep / "runs" / source.name, "RuntimeError: boom")
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "no finished run" in err and "1 failed, 7 missing" in err
    assert sorted(p.name for p in sweep.iterdir()) == ["runs", "sweep.json"]


@pytest.mark.slow
def test_out_that_is_a_file_exits_2(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["report", str(sweep_dir), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "x"


@pytest.mark.slow
def test_out_that_holds_something_else_is_refused(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["report", str(sweep_dir), "--out", str(mine)]) == 2
    assert "holds files resgrad did not write (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("made_before_the_manifest", [False, True])
def test_a_file_the_user_added_to_an_earlier_reports_figures_or_tables_refuses_the_report_and_stays(
    report: tuple[Path, str], tmp_path: Path, made_before_the_manifest: bool
) -> None:
    out = tmp_path / "report"
    shutil.copytree(report[0], out)
    if made_before_the_manifest:  # then its report.md says which figures and tables are its own
        (out / ".resgrad.json").unlink()
    (out / "figures" / "my_annotated_plot.png").write_bytes(PNG_MAGIC)
    (out / "tables" / "my_table.csv").write_text("mine\n")
    before = snapshot(out)
    code, err = run_cli(["report", str(report[0].parent), "--out", str(out)])
    assert code == 2
    assert "(figures/my_annotated_plot.png, tables/my_table.csv)" in one_sentence(err, "report")
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_report_into_the_place_of_a_killed_report_cleans_up_after_it(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = _copy(sweep_dir, tmp_path)
    code = (
        "import os, signal\nfrom resgrad.files import atomic_dir\n"
        f"with atomic_dir({str(sweep / 'report')!r}, 'report') as tmp:\n"
        "    (tmp / 'report.md').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == -signal.SIGKILL
    assert len(leftovers(sweep)) == 1
    assert _report([str(sweep)])[0] == 0
    assert leftovers(sweep) == [] and (sweep / "report" / "report.md").read_text() != "half"


@pytest.mark.slow
def test_headline_table_api(sweep_dir: Path) -> None:
    table = headline_table(load_sweep(sweep_dir))
    assert list(table.columns) == [
        "depth",
        "plain_test_acc",
        "residual_test_acc",
        "plain_log10_grad_ratio_first",
        "residual_log10_grad_ratio_first",
        "plain_log10_grad_ratio_last",
        "residual_log10_grad_ratio_last",
    ]


def test_markdown_table_escapes_pipes_and_aligns_numbers_right() -> None:
    frame = pd.DataFrame({"name|x": ["a|b", "two\nlines"], "ms": [1.5, 20.0]})
    text = markdown_table(frame)
    assert text == ("| name\\|x | ms |\n|:---|---:|\n| a\\|b | 1.5 |\n| two lines | 20.0 |\n")
    assert markdown_table(frame, lambda v, c: f"<{c}>").splitlines()[2] == "| <name\\|x> | <ms> |"


@pytest.mark.slow
def test_the_sweep_paragraph_names_the_depth_the_runs_have_not_the_grid(tmp_path: Path, data_dir: Path) -> None:
    """The seed archs have one depth (7) whatever the grid's depths: the report says what the runs are."""
    out = tmp_path / "seed"
    spec = SweepSpec(
        grid={"arch": ["seed-residual", "seed-plain"], "depth": [8, 14, 20], "seed": [0]},
        fixed=_fixed(data_dir, steps=2, eval_every=2, record_every=2, train_subset=64, test_subset=50),
    )
    assert len(run_sweep(spec, out, progress=False)) == 2
    assert _report([str(out)])[0] == 0
    text = (out / "report" / "report.md").read_text()
    assert "Varied: arch ∈ {seed-residual, seed-plain}." in text
    assert "The same for every run: depth=7," in text and "depth ∈" not in text
