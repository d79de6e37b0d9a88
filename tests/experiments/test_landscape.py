"""Loss landscapes: filter normalisation as Li et al. define it, the surface of a known quadratic, the Hessian's
extremes against autograd's full Hessian, the init rebuilt as `resgrad train` builds it, and the command's rules."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import exit_code
from torch import nn

from resgrad.compute import resolve_channels_last
from resgrad.config import TrainConfig
from resgrad.data import Split, load_split
from resgrad.experiments.landscape import (
    LandscapeConfig,
    curvature,
    path_rows,
    surface_rows,
)
from resgrad.experiments.landscape_numerics import (
    filter_normalise,
    fold_batch_norm,
    lanczos_extremes,
    random_directions,
)
from resgrad.models import build_model
from resgrad.ownership import OWN_NAMES
from resgrad.train import evaluate, initial_model, load_model, make_optimizer, train_step

# ---------------------------------------------------------------- filter normalisation


class Small(nn.Module):
    """A conv with two filters of two weights, batch norm, a linear layer of two rows: every kind of parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=(1, 2), bias=True)
        self.norm = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)


@pytest.mark.parametrize("scale", [1.0, 1e-40, 1e30])
def test_filter_normalisation_rescales_each_filter_to_the_weights_filter_norm(scale: float) -> None:
    net = Small()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]]) * scale)  # filter norms 5s and 0
        net.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]) * scale)  # row norms s and 2s
    params = list(net.parameters())  # conv.weight, conv.bias, norm.weight, norm.bias, fc.weight, fc.bias
    raw = [torch.ones(p.shape, dtype=torch.float64) for p in params]
    raw[0] = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]], dtype=torch.float64)
    raw[4] = torch.tensor([[0.0, 3.0], [4.0, 0.0]], dtype=torch.float64)
    out = filter_normalise(raw, params)
    # by hand, from the float32 weights as stored: ||(3s, 4s)|| and the rows' norms
    w = params[0].detach().double()
    conv_norm = math.hypot(w[0, 0, 0, 0].item(), w[0, 0, 0, 1].item())
    fc = params[4].detach().double()
    assert torch.equal(out[0], torch.tensor([[[[conv_norm, 0.0]]], [[[0.0, 0.0]]]], dtype=torch.float64))
    assert torch.equal(out[4], torch.tensor([[0.0, fc[0, 0].item()], [fc[1, 1].item(), 0.0]], dtype=torch.float64))
    for i in (1, 2, 3, 5):  # biases and batch norm are not moved
        assert torch.equal(out[i], torch.zeros_like(raw[i]))
    assert conv_norm > 0 and math.isfinite(conv_norm)


def test_twins_draw_the_same_directions_and_another_seed_others() -> None:
    plain = build_model("plain", depth=8, width=4, norm="batch", init="kaiming")
    torch.manual_seed(7)
    residual = build_model("residual", depth=8, width=4, norm="batch", init="kaiming")
    a = random_directions(list(plain.parameters()), seed=3)
    b = random_directions(list(residual.parameters()), seed=3)
    c = random_directions(list(plain.parameters()), seed=4)
    assert len(a) == 2 and all(torch.equal(x, y) for d, e in zip(a, b) for x, y in zip(d, e))
    assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], a[1][0])
    for d in a:
        for x, p in zip(d, plain.parameters()):
            assert x.shape == p.shape and (p.dim() > 1 or not x.any())


# ---------------------------------------------------------------- batch norm folded into the convolutions


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters for every batch norm (eval mode uses them)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ["plain", "residual"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_folding_batch_norm_into_the_convolutions_keeps_the_function(arch: str, shortcut: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, depth=8, width=4, norm="batch", shortcut=shortcut, init="kaiming").eval()
    _randomise_norms(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, scales = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # the stem, two convs per block, and the projections that run (a plain block never calls its shortcut)
    assert len(scales) == 1 + 2 * 3 + (2 if shortcut == "B" and arch == "residual" else 0)
    for name, s in scales.items():
        norm = model.get_submodule(name.removesuffix(".weight").replace("conv", "bn").replace("stem", "stem_norm"))
        if isinstance(norm, nn.BatchNorm2d):  # a projection's norm sits beside it in a Sequential
            assert torch.allclose(s, norm.weight / torch.sqrt(norm.running_var + norm.eps))
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_surface_of_a_batch_norm_net_is_that_of_the_net_moved_by_hand() -> None:
    torch.manual_seed(0)
    model = build_model("residual", depth=8, width=4, norm="batch", shortcut="B", init="kaiming").eval()
    _randomise_norms(model)
    data = Split(torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,)))
    rows = surface_rows(model, data, LandscapeConfig(grid=3, span=0.5, direction_seed=2), batch_size=8)
    params = list(model.parameters())
    d, e = (filter_normalise(raw, params) for raw in random_directions(params, 2))
    for row in rows:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, dp, ep in zip(moved.parameters(), d, e):
                p += (row["alpha"] * dp + row["beta"] * ep).float()
        loss, acc = evaluate(moved, data, 8)
        assert row["loss"] == pytest.approx(loss, rel=1e-5) and row["accuracy"] == acc
    assert {r["kind"] for r in rows} == {"2d", "1d"} and len(rows) == 9 + 5


# ---------------------------------------------------------------- the surface of a known quadratic


class Quadratic(nn.Module):
    """Cross-entropy equal to Q(W) = q0 + ½ Σ a·(W − C)² for label 0: the logits are (0, log(exp(Q) − 1)).

    Then CE = log(1 + exp(Q) − 1) = Q, whatever the input: the loss is an exact quadratic in W.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(3, dtype=torch.float64))  # one dim: not moved
        self.register_buffer("a", torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.5)
        self.register_buffer("c", torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.q0 = 0.25

    def q(self, w: torch.Tensor) -> torch.Tensor:
        return self.q0 + 0.5 * (self.a * (w - self.c) ** 2).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(self.weight)  # the bias is not used: its gradient is None, taken as zero
        logits = torch.stack([torch.zeros_like(q), torch.log(torch.expm1(q))])
        return logits.expand(len(x), 2)


def test_the_surface_of_an_exact_quadratic_is_its_closed_form() -> None:
    model = Quadratic()
    data = Split(torch.zeros(5, 1, 2, 2, dtype=torch.float64), torch.zeros(5, dtype=torch.int64))
    config = LandscapeConfig(grid=5, span=0.8, direction_seed=11)
    rows = pd.DataFrame(surface_rows(model, data, config, batch_size=2))
    w0 = model.weight.detach().clone()
    raw = random_directions(list(model.parameters()), 11)
    # filter normalisation by hand: each row of the raw draw rescaled to the norm of the same row of W
    d, e = (r[0] * (w0.norm(dim=1) / r[0].norm(dim=1))[:, None] for r in raw)
    assert len(rows) == 5 * 5 + 9
    assert sorted(rows.loc[rows["kind"] == "2d", "alpha"].unique()) == pytest.approx([-0.8, -0.4, 0, 0.4, 0.8])
    assert sorted(rows.loc[rows["kind"] == "1d", "alpha"]) == pytest.approx([0.2 * k for k in range(-4, 5)])
    for row in rows.itertuples():
        want = model.q(w0 + row.alpha * d + row.beta * e).item()
        assert row.loss == pytest.approx(want, rel=1e-6)  # evaluate() sums the batches' losses in float32
        assert row.accuracy == (1.0 if want < math.log(2) else 0.0)
    assert torch.equal(model.weight, w0)  # the weights are put back


def test_lanczos_finds_the_quadratics_extreme_curvatures() -> None:
    model = Quadratic()
    data = Split(torch.zeros(4, 1, 2, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    found = curvature(model, data, LandscapeConfig(hessian_steps=100), batch_size=3)
    # with respect to W (the bias is not a weight the surface moves) the Hessian is diag(a)
    assert found["weights"] == 12
    assert found["lambda_max"] == pytest.approx(model.a.max().item(), rel=1e-10)
    assert found["lambda_min"] == pytest.approx(model.a.min().item(), rel=1e-10)
    assert found["hessian_products"] <= 12


# ---------------------------------------------------------------- the Hessian against autograd's


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.norm = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 2, bias=True)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(x)))  # (B, 2, 4, 4)
        x = torch.tanh(self.conv2(x))  # (B, 2, 3, 3)
        return self.fc(x.flatten(1))


def test_the_hessian_extremes_match_autograds_full_hessian_in_float64() -> None:
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.2, 0.2)
        model.norm.running_var.uniform_(0.5, 1.5)
        model.norm.weight.uniform_(0.5, 1.5)
    data = Split(torch.randn(13, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (13,)))
    # the Hessian with respect to the conv and linear weights; biases and batch norm held where they are
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() > 1}
    fixed = {n: p.detach() for n, p in model.named_parameters() if p.dim() <= 1} | dict(model.named_buffers())
    shapes = [p.shape for p in weights.values()]
    flat = torch.cat([p.reshape(-1) for p in weights.values()])

    def loss(v: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(weights, (t.view(s) for t, s in zip(v.split([math.prod(s) for s in shapes]), shapes))))
        out = torch.func.functional_call(model, {**parts, **fixed}, (data.images,))
        return F.cross_entropy(out, data.labels)

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    assert eigenvalues[0] < -1e-3 * eigenvalues[-1]  # a saddle: the small end is worth testing
    found = curvature(model, data, LandscapeConfig(hessian_steps=len(flat)), batch_size=7)
    assert found["lambda_max"] == pytest.approx(eigenvalues[-1].item(), rel=1e-6)
    assert found["lambda_min"] == pytest.approx(eigenvalues[0].item(), rel=1e-6)
    assert found["abs_min_over_max"] == pytest.approx(abs(eigenvalues[0] / eigenvalues[-1]).item(), rel=1e-6)


def test_lanczos_bounds_the_spectrum_from_inside_and_reports_its_residuals() -> None:
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(-1.0, 1.0, 60, dtype=torch.float64) ** 3 * 10
    a = q @ torch.diag(spectrum) @ q.T
    few = lanczos_extremes(lambda v: a @ v, 60, steps=8)
    assert few.steps == 8 and few.lambda_max <= 10 + 1e-12 and few.lambda_min >= -10 - 1e-12
    # each residual bound is honest: an eigenvalue lies within it
    assert (spectrum - few.lambda_max).abs().min() <= few.max_error
    assert (spectrum - few.lambda_min).abs().min() <= few.min_error
    full = lanczos_extremes(lambda v: a @ v, 60, steps=100)
    assert full.steps == 60 and full.lambda_max == pytest.approx(10, rel=1e-10)
    assert full.lambda_min == pytest.approx(-10, rel=1e-10)


# ---------------------------------------------------------------- on trained runs


@pytest.fixture(scope="module")
def sweep_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain and residual, depth 8, width 4, batch norm, kaiming: 10 steps on 500 images."""
    out = tmp_path_factory.mktemp("landscape") / "sweep"
    torch.set_num_threads(1)
    args = ["sweep", "--out", str(out), "--archs", "plain", "residual", "--depths", "8", "--widths", "4"]
    args += ["--norms", "batch", "--inits", "kaiming", "--steps", "10", "--train-subset", "500"]
    args += ["--test-subset", "100", "--device", "cpu", "--threads", "1", "--data-dir", str(data_dir), "--quiet"]
    assert main_ok(args)
    return out


def main_ok(args: list[str]) -> bool:
    return exit_code(args) == 0


def _small(data_dir: Path) -> list[str]:
    return ["--grid", "3", "--images", "40", "--hessian-steps", "3", "--device", "cpu", "--data-dir", str(data_dir)]


@pytest.mark.slow
def test_the_init_rebuilt_from_a_runs_seed_is_what_resgrad_train_starts_from(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--arch", "residual", "--depth", "8", "--width", "4", "--norm", "batch", "--init", "kaiming"]
    args += ["--seed", "5", "--steps", "1", "--batch-size", "32", "--lr", "0.1", "--train-subset", "200"]
    args += ["--test-subset", "50", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(run_dir)]
    assert main_ok([*args, "--quiet"])
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    trained = torch.load(run_dir / "model.pt", weights_only=True)
    train_set = load_split(True, str(data_dir), 200)
    # the first batch of a run of seed 5: its seeded permutation's first 32 indices
    first = torch.randperm(200, generator=torch.Generator().manual_seed(5))[:32]

    # in the memory format train() used (channels-last on the CPU by default): the same kernels, the same bits
    channels_last = resolve_channels_last(config.channels_last, torch.device("cpu"), config.norm)

    def one_step_from(model: nn.Module) -> dict[str, torch.Tensor]:
        model = model.to(memory_format=torch.channels_last) if channels_last else model
        model.train()
        opt = make_optimizer(config, model.parameters())
        train_step(model, opt, train_set.images[first], train_set.labels[first], channels_last=channels_last)
        return model.state_dict()

    stepped = one_step_from(initial_model(config))
    assert stepped.keys() == trained.keys()
    for k, v in trained.items():
        assert torch.equal(stepped[k].to(v.dtype), v), k
    other = one_step_from(initial_model(dataclasses.replace(config, seed=6)))
    assert not torch.allclose(other["stem.weight"], trained["stem.weight"])
    # and the landscape's line starts there: its t = 0 is the rebuilt init, its t = 1 the trained net
    data = load_split(True, str(data_dir), 40)
    rows = path_rows(load_model(run_dir), initial_model(config), data, 3, 16)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["loss"] == evaluate(initial_model(config).eval(), data, 16)[0]
    assert rows[-1]["loss"] == evaluate(load_model(run_dir), data, 16)[0]


@pytest.mark.slow
def test_a_sweep_gets_every_kind_of_row_for_both_twins_and_the_files_its_folder_owns(
    sweep_dir: Path, data_dir: Path
) -> None:
    assert main_ok(["landscape", str(sweep_dir), *_small(data_dir), "--quiet"])
    out = sweep_dir / "landscape"
    assert sorted(p.name for p in out.iterdir()) == sorted(OWN_NAMES["landscape"])  # with its manifest
    frame = pd.read_csv(out / "landscape.csv")
    assert sorted(frame["arch"].unique()) == ["plain", "residual"]
    counts = frame.groupby(["arch", "kind"]).size().unstack()
    assert (counts["2d"] == 9).all() and (counts["1d"] == 5).all() and (counts["init-final"] == 5).all()
    surface = frame[frame["kind"] == "2d"].set_index(["arch", "alpha", "beta"])["loss"]
    line = frame[frame["kind"] == "1d"].set_index(["arch", "alpha", "beta"])["loss"]
    shared = line.index.intersection(surface.index)
    assert len(shared) == 2 * 3 and (line[shared] == surface[shared]).all()  # the beta = 0 row, computed once
    curv = pd.read_csv(out / "curvature.csv")
    assert len(curv) == 2 and (curv["hessian_products"] == 3).all() and (curv["images"] == 40).all()
    assert (curv["lambda_max"] >= curv["lambda_min"]).all()
    ends = frame[(frame["kind"] == "init-final") & (frame["alpha"] == 1.0)].set_index("arch")["loss"]
    centre = curv.set_index("arch")["loss"]
    assert (ends == centre[ends.index]).all()


@pytest.mark.slow
def test_the_report_gets_a_loss_landscape_section_when_the_sweep_has_one(
    sweep_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep)
    if not (sweep / "landscape").exists():
        assert main_ok(["landscape", str(sweep), *_small(data_dir), "--quiet"])
    assert main_ok(["report", str(sweep)])
    md = (sweep / "report" / "report.md").read_text()
    assert "## Loss landscape" in md and "figures/landscape_2d.png" in md
    assert (sweep / "report" / "figures" / "landscape_init_final.png").is_file()
    table = pd.read_csv(sweep / "report" / "tables" / "landscape.csv")
    assert sorted(table["arch"]) == ["plain", "residual"]


# ---------------------------------------------------------------- bad input and the output folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "2"], "grid must be a whole number >= 3, got 2."),
        (["--images", "0"], "images must be a whole number from 1 to 60,000, got 0."),
        (["--images", "60001"], "images must be a whole number from 1 to 60,000, got 60001."),
        (["--span", "0"], "span must be a finite number > 0, got 0.0."),
        (["--hessian-steps", "1"], "hessian-steps must be a whole number >= 2, got 1."),
    ],
)
def test_bad_values_exit_2_with_one_sentence(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["landscape", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"resgrad landscape: error: {message}"


def test_a_folder_that_is_no_run_exits_2_with_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["landscape", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resgrad landscape: error:") and "is neither a sweep folder" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "nowhere-landscape").exists()


@pytest.mark.slow
def test_a_run_without_weights_exits_2_and_a_run_folder_is_measured_beside_it(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "residual-run"
    shutil.copytree(next((sweep_dir / "runs").glob("residual-*")), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main_ok(["landscape", str(run_dir), *_small(data_dir), "--quiet"])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    frame = pd.read_csv(tmp_path / "residual-run-landscape" / "landscape.csv")
    assert frame["run_id"].unique().tolist() == ["residual-run"]
    (run_dir / "model.pt").unlink()
    assert exit_code(["landscape", str(run_dir), *_small(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resgrad landscape: error: run folder") and "cannot be measured" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_an_earlier_landscape_folder_is_replaced_and_any_other_refused_before_any_work(
    sweep_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main_ok(["landscape", str(sweep_dir), "--out", str(out), *_small(data_dir), "--quiet"])
    first = (out / "landscape.csv").read_bytes()
    assert main_ok(["landscape", str(sweep_dir), "--out", str(out), *_small(data_dir), "--span", "0.5", "--quiet"])
    assert (out / "landscape.csv").read_bytes() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".resgrad-")]
    (out / "notes.txt").write_text("mine")
    assert exit_code(["landscape", str(sweep_dir), "--out", str(out), *_small(data_dir)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1")
    lesion = tmp_path / "lesion"
    lesion.mkdir()
    (lesion / "lesion.csv").write_text("run_id\n")
    for folder, words in [(mine, "holds files resgrad did not write"), (lesion, "is a resgrad lesion folder")]:
        assert exit_code(["landscape", str(sweep_dir), "--out", str(folder), *_small(data_dir)]) == 2
        assert words in capsys.readouterr().err
    assert (mine / "data.csv").read_text() == "1" and (lesion / "lesion.csv").read_text() == "run_id\n"
