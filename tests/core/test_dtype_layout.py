"""--dtype bfloat16 and --channels-last on the CPU: flags reach the config, norms stay exact, ids stay put."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import autograd_norms
from torch import nn

import resgrad.train
from resgrad.cli import main
from resgrad.config import TrainConfig
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model
from resgrad.sweeps.grid import read_config
from resgrad.train import train, train_step

SMALL = dict(depth=8, width=4, train_subset=512, test_subset=200, threads=1, batch_size=32)


def test_run_ids_of_runs_made_before_the_new_fields_stay():
    # Ids computed before dtype, channels_last and cuda_graphs existed: a committed folder keeps its name.
    # Runs made then were contiguous: channels_last=False, which a config.json without the key also means.
    before = TrainConfig(channels_last=False)
    assert before.run_id() == "residual-d20-w16-s0-ca9c6f"
    seed = dataclasses.replace(before, arch="seed-residual").validate()
    assert seed.run_id() == "seed-residual-s0-a57248"
    old_json = {k: v for k, v in before.to_dict().items() if k not in ("dtype", "channels_last", "cuda_graphs")}
    assert TrainConfig.from_dict(old_json) == before
    graphs = {dataclasses.replace(before, cuda_graphs=mode).run_id() for mode in ("on", "off", "auto")}
    assert graphs == {before.run_id()}
    # What changes the numbers changes the id: bfloat16, channels-last, and the automatic memory format
    # (channels-last on the CPU), today's default, differ from the contiguous runs of before.
    ids = {
        before.run_id(),
        TrainConfig(channels_last=False, dtype="bfloat16").run_id(),
        TrainConfig(channels_last=True).run_id(),
        TrainConfig().run_id(),
        TrainConfig(channels_last=False, compile=True).run_id(),
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="float16"), "unknown dtype 'float16'; allowed: float32, bfloat16"),
        (dict(cuda_graphs="yes"), "unknown cuda-graphs 'yes'; allowed: auto, on, off"),
        (dict(channels_last="yes"), "channels-last must be true or false"),
    ],
)
def test_bad_new_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs).validate()


def test_train_flags_reach_the_run_config(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "train",
        "--steps",
        "2",
        "--depth",
        "8",
        "--width",
        "2",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--quiet",
        "--out",
        str(out),
        "--dtype",
        "bfloat16",
        "--channels-last",
        "--cuda-graphs",
        "off",
    ]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["channels_last"], config["cuda_graphs"]) == ("bfloat16", True, "off")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["cuda_graphs"] is False
    assert summary["run_id"] == TrainConfig.from_dict(config).run_id()


def test_sweep_flags_and_toml_keys_reach_every_run(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    (tmp_path / "s.toml").write_text('dtype = "bfloat16"\nchannels_last = true\ncuda_graphs = "auto"\n')
    assert read_config(tmp_path / "s.toml") == {"dtype": "bfloat16", "channels_last": True, "cuda_graphs": "auto"}
    argv = [
        "sweep",
        "--out",
        str(out),
        "--config",
        str(tmp_path / "s.toml"),
        "--archs",
        "plain",
        "residual",
        "--depths",
        "8",
        "--widths",
        "2",
        "--steps",
        "2",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--quiet",
        "--cuda-graphs",
        "off",
    ]
    assert main(argv) == 0
    configs = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/config.json"))]
    assert len(configs) == 2
    for c in configs:  # the file's dtype and channels_last, the flag's cuda_graphs
        assert (c["dtype"], c["channels_last"], c["cuda_graphs"]) == ("bfloat16", True, "off")


def test_bfloat16_training_on_cpu_runs_and_learns(data_dir: Path) -> None:
    config = TrainConfig(
        arch="residual",
        norm="batch",
        steps=40,
        lr=0.05,
        momentum=0.9,
        record_every=5,
        dtype="bfloat16",
        data_dir=str(data_dir),
        **SMALL,
    )
    result = train(config, progress=False)
    loss = result.metrics.train_loss.to_numpy()
    assert result.status == "complete" and np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()
    norms = result.grad_norms
    assert sorted(norms.step.unique()) == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    assert np.isfinite(norms.norm).all() and (norms[norms.quantity != "act_deriv"].norm > 0).all()


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_bfloat16_norms_are_float32_exact_against_float64_of_the_same_gradients(norm: str) -> None:
    torch.manual_seed(0)
    model = build_model("residual", 14, width=4, norm=norm)
    before = copy.deepcopy(model)  # the weights the step's gradients are taken at (the update changes them)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with GradientRecorder(model, schedule=1) as rec:
        train_step(model, opt, x, y, rec, dtype="bfloat16")
    frame = rec.to_frame()
    weights = frame[frame.quantity == "weight_grad"]
    signal = frame[frame.quantity == "activation_grad"]
    # The same gradients the recorder saw: autograd on the same weights and batch, under the same autocast.
    expected = autograd_norms(before, x, y, list(weights.layer), list(signal.layer), autocast=torch.bfloat16)
    assert all(dict(model.named_modules())[n].weight.grad.dtype == torch.float32 for n in weights.layer)
    assert set(expected.signal_dtype.values()) == {torch.bfloat16}  # autocast really ran
    np.testing.assert_allclose(weights.norm.to_numpy(), [expected.weight_grad[n] for n in weights.layer], rtol=1e-6)
    np.testing.assert_allclose(signal.norm.to_numpy(), [expected.activation_grad[n] for n in signal.layer], rtol=1e-6)
    assert len(weights) == 14 and len(signal) == 6


def test_channels_last_the_cpu_default_gives_the_numbers_of_contiguous(data_dir: Path, monkeypatch) -> None:
    formats: list[bool] = []  # whether the input of the second conv was in channels-last layout

    def watched(*args, **kwargs):
        model = build_model(*args, **kwargs)
        conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]  # C > 1: the layouts differ
        conv.register_forward_pre_hook(
            lambda m, inputs: formats.append(
                inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()
            )
        )
        return model

    monkeypatch.setattr(resgrad.train, "build_model", watched)
    # No batch norm: its backward subtracts nearly equal terms, which magnifies the last-bit differences of
    # the two layouts' conv kernels in the weight gradients before it (to ~1e-3 in a few steps).
    base = dict(arch="residual", norm="none", steps=12, record_every=3, data_dir=str(data_dir), **SMALL)
    contiguous = train(TrainConfig(**base, channels_last=False), progress=False)
    assert formats and not any(formats) and contiguous.summary["channels_last"] is False
    formats.clear()
    last = train(TrainConfig(**base), progress=False)  # by default (auto): channels-last on the CPU
    assert formats and all(formats) and last.summary["channels_last"] is True
    np.testing.assert_allclose(last.metrics.train_loss, contiguous.metrics.train_loss, rtol=1e-5)
    np.testing.assert_allclose(last.metrics.test_loss.dropna(), contiguous.metrics.test_loss.dropna(), rtol=1e-5)
    pd.testing.assert_frame_equal(last.grad_norms.drop(columns="norm"), contiguous.grad_norms.drop(columns="norm"))
    np.testing.assert_allclose(last.grad_norms.norm, contiguous.grad_norms.norm, rtol=1e-5)
