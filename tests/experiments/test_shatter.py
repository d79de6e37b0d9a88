"""Shattered gradients: the correlation against numpy's, batched gradients against one-at-a-time autograd,
nets at init as train builds them, determinism, and bad input (one sentence, exit code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import exit_code

from resgrad.cli import main
from resgrad.experiments.shatter import ShatterConfig, correlations, directions, input_gradients, pearson, run_shatter
from resgrad.models import build_model
from resgrad.report.plotting import png
from resgrad.report.shatter import COLUMNS, figure_vs_depth, figure_vs_distance


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, label: int) -> torch.Tensor:
    """The reference: one image at a time, plain autograd."""
    x = x[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[0, label], x)
    return g[0]


def test_the_correlation_of_a_gradient_with_itself_is_one_at_any_scale() -> None:
    torch.manual_seed(0)
    model = build_model("residual", depth=8, width=4).double().eval()
    g = _input_gradient(model, torch.randn(1, 28, 28, dtype=torch.float64), 3).flatten()
    for scale in (1e-40, 1e-25, 1.0, 1e30):
        v = (g * scale).float() if scale >= 1e-30 else g * scale  # 1e-40 only fits float64
        assert pearson(v, v).item() == pytest.approx(1.0, abs=1e-12)
    # the gradient at distance 0 is the gradient at x
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    r = correlations(model, x, torch.tensor([0, 1, 2, 3]), directions(4, 0).double(), [0.0], batch_size=3)
    assert torch.allclose(r, torch.ones(4, 1, dtype=torch.float64), atol=1e-12)


def test_the_correlation_is_pearsons_and_independent_gradients_are_near_zero() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 50, 784))
    b_mixed = 0.6 * a + 0.8 * b  # correlated with a by about 0.6
    want = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b_mixed)])
    got = pearson(torch.from_numpy(a), torch.from_numpy(b_mixed)).numpy()
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    independent = pearson(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert abs(independent.mean()) < 0.02 and np.abs(independent).max() < 0.15  # sd 1/sqrt(784) = 0.036
    # two nets with independent weights: their input gradients at one image are unrelated
    x = torch.randn(1, 28, 28, dtype=torch.float64)
    grads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        grads.append(_input_gradient(build_model("plain", depth=110, width=4, init="kaiming").double().eval(), x, 0))
    assert abs(pearson(grads[0].flatten(), grads[1].flatten()).item()) < 0.15
    assert torch.isnan(pearson(torch.zeros(784), torch.ones(784)))  # a zero gradient has no correlation


def test_batched_gradients_equal_one_image_at_a_time_in_eval_mode_with_batch_norm() -> None:
    torch.manual_seed(0)
    model = build_model("residual", depth=8, width=4, norm="batch").double()
    with torch.no_grad():  # running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 3, 1])
    got = input_gradients(model, x, labels, batch_size=2)
    want = torch.stack([_input_gradient(model, x[i], int(labels[i])) for i in range(5)])
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-300)


def test_directions_have_unit_norm_and_depend_on_the_seed_only() -> None:
    d = directions(6, 3)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.equal(d, directions(6, 3)) and not torch.equal(d, directions(6, 4))


def test_nets_at_init_are_the_nets_train_starts_from(data_dir: Path) -> None:
    frame = run_shatter(
        ShatterConfig(
            archs=["residual"],
            depths=[8],
            widths=[4],
            seeds=[7],
            images=3,
            distances=[0.5, 2.0],
            device="cpu",
            data_dir=str(data_dir),
        ),
        progress=False,
    )
    torch.manual_seed(7)  # what train() does before build_model
    model = build_model("residual", 8, 4).double().eval()
    from resgrad.data import load_split

    test = load_split(False, str(data_dir), 3)
    x, d = test.images.double(), directions(3, 0)
    want = []
    for t in (0.5, 2.0):
        r = [
            pearson(
                _input_gradient(model, x[i], int(test.labels[i])).flatten(),
                _input_gradient(model, x[i] + t * d[i], int(test.labels[i])).flatten(),
            ).item()
            for i in range(3)
        ]
        want.append(np.mean(r))
    assert frame["correlation"].tolist() == pytest.approx(want, abs=1e-12)
    assert frame["state"].tolist() == ["init", "init"] and frame["images"].tolist() == [3, 3]


@pytest.fixture(scope="module")
def trained_sweep(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shatter") / "sweep"
    torch.set_num_threads(1)
    assert (
        main(
            [
                "sweep",
                "--out",
                str(out),
                "--archs",
                "residual",
                "--depths",
                "8",
                "--widths",
                "4",
                "--norms",
                "batch",
                "--steps",
                "5",
                "--train-subset",
                "500",
                "--test-subset",
                "100",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--data-dir",
                str(data_dir),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def _argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "shatter",
        "--archs",
        "plain",
        "residual",
        "--depths",
        "8",
        "14",
        "--widths",
        "4",
        "--seeds",
        "0",
        "1",
        "--images",
        "3",
        "--distances",
        "0.1",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.slow
def test_shatter_is_deterministic_and_measures_the_sweeps_trained_nets(
    trained_sweep: Path, data_dir: Path, tmp_path: Path
) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert exit_code(_argv(data_dir, out, "--sweep", str(trained_sweep))) == 0
    assert (outs[0] / "shatter.csv").read_bytes() == (outs[1] / "shatter.csv").read_bytes()
    assert sorted(p.name for p in outs[0].iterdir()) == [
        "shatter.csv",
        "shatter_correlation_vs_depth.png",
        "shatter_correlation_vs_distance.png",
    ]
    frame = pd.read_csv(outs[0] / "shatter.csv")
    # 2 archs x 2 depths x 2 seeds at init, plus the trained run and its own init (norm batch, not in the grid)
    assert len(frame) == (8 + 2) * 2
    trained = frame[frame["state"] == "trained"]
    assert trained["run_id"].str.startswith("residual-d8-w4-s0-").all() and len(trained) == 2
    assert frame["correlation"].between(-1, 1).all()
    assert exit_code(_argv(data_dir, outs[0], "--seeds", "0")) == 0  # an earlier shatter folder is replaced
    assert len(pd.read_csv(outs[0] / "shatter.csv")) == 2 * 2 * 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--depths", "21"], "depth 21 is not of the form 6n+2"),
        (["--distances"], "give at least one value for distances as a list, got []."),
        (["--distances", "0.1", "nan"], "distance must be a finite number, got nan."),
        (["--distances", "inf"], "distance must be a finite number, got inf."),
        (["--figure-distance", "3"], "figure distance 3 is not one of the distances 0.1, 1."),
        (["--norms", "group"], "unknown norm 'group'"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    extra: list[str], message: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert exit_code(_argv(data_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resgrad shatter: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_sweep_without_weights_and_a_foreign_output_folder_exit_2(
    trained_sweep: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    shutil.copytree(trained_sweep, old)
    for run_dir in (old / "runs").iterdir():  # as saved before resgrad kept weights: no model.pt, no record of files
        (run_dir / "model.pt").unlink()
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.pop("files", None)
        (run_dir / "summary.json").write_text(json.dumps(summary))
    assert exit_code(_argv(data_dir, tmp_path / "out", "--sweep", str(old))) == 2
    assert "holds no complete plain/residual run with saved weights" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    assert exit_code(_argv(data_dir, mine)) == 2
    assert "thesis.tex" in capsys.readouterr().err and (mine / "thesis.tex").read_text() == "x"


# ---------------------------------------------------------------- what cannot be plotted, and where it goes


@pytest.mark.slow
def test_a_net_whose_input_gradient_is_zero_everywhere_is_kept_in_the_csv_and_named(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = ["shatter", "--depths", "8", "--widths", "2", "--images", "2", "--threads", "1", "--device", "cpu"]
    assert exit_code([*argv, "--data-dir", str(data_dir), "--out", str(out)]) == 0  # the command
    frame = pd.read_csv(out / "shatter.csv")
    plain = frame[frame["arch"] == "plain"]
    assert len(plain) == 9 and plain["correlation"].isna().all() and (plain["images"] == 0).all()
    assert frame.loc[frame["arch"] == "residual", "correlation"].between(-1, 1).all()
    for name in ("shatter_correlation_vs_distance", "shatter_correlation_vs_depth"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "plain-d8-w2 (norm none, init default, seed 0, at init)" in caplog.text
    captured = capsys.readouterr()
    assert "| init | none | 2 | default | 8 | — |" in captured.out and "—: no correlation" in captured.out
    # stderr is not a terminal here: a line per net, as in a log
    assert "shatter: 1 of 2 nets done (plain-d8-w2 seed 0, init), " in captured.err
    assert "shatter: 2 of 2 nets done (residual-d8-w2 seed 0, init), " in captured.err


def test_figures_leave_out_the_nets_without_a_correlation_and_say_so() -> None:
    rows = []
    for arch, value in (("plain", float("nan")), ("residual", 0.5)):
        for t in (0.1, 1.0):
            rows.append(
                dict(arch=arch, depth=8, width=2, norm="none", activation="relu", init="default", seed=0)
                | dict(state="init", run_id="", distance=t, correlation=value, correlation_std=0.0, images=2)
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    fig, caption = figure_vs_distance(frame)
    png(fig)
    plain, residual = fig.axes[:2]
    assert not plain.lines[:-1] and len(residual.lines) == 2  # residual: its line and the zero line
    assert "no correlation" in " ".join(t.get_text() for t in plain.texts)
    assert "Not drawn: 2 of 4 net × distance points have no correlation" in caption
    assert "plain-d8-w2 (norm none, init default, seed 0, at init)" in caption
    fig, caption = figure_vs_depth(frame, 1.0)
    png(fig)
    assert "Not drawn: 1 of 2" in caption


@pytest.mark.slow
def test_shatter_writes_into_a_default_folder_like_lesion(
    trained_sweep: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["shatter", "--depths", "8", "--widths", "2", "--images", "2", "--distances", "1", "--device", "cpu"]
    argv += ["--data-dir", str(data_dir), "--quiet"]
    assert exit_code(argv) == 0
    assert (tmp_path / "runs" / "shatter" / "shatter.csv").is_file()
    sweep = tmp_path / "sweep"
    shutil.copytree(trained_sweep, sweep)
    assert exit_code([*argv, "--sweep", str(sweep)]) == 0
    assert (
        len(pd.read_csv(sweep / "shatter" / "shatter.csv")) == 2 + 2
    )  # the grid's nets + the run, at init and trained
    (run,) = (sweep / "runs").iterdir()
    assert exit_code([*argv, "--sweep", str(run)]) == 0
    assert (run.parent / f"{run.name}-shatter" / "shatter.csv").is_file()
