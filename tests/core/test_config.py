"""One declaration per option: flags, sweep axes, TOML keys and report facets all come from TrainConfig."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resgrad.cli import make_parser
from resgrad.config import TrainConfig
from resgrad.data import endless_batches, load_split
from resgrad.errors import UsageError
from resgrad.models import build_model
from resgrad.report.sweepdata import FACET_OPTIONS
from resgrad.sweeps.grid import CONFIG_KEYS, DEFAULT_GRID, LIST_FLAGS, RUN_KEYS, SweepSpec, read_config
from resgrad.train import train


def _flags(command: str) -> set[str]:
    sub = next(a for a in make_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return {opt for action in sub.choices[command]._actions for opt in action.option_strings}


def test_every_field_is_one_train_flag_and_every_axis_one_sweep_list_flag() -> None:
    train_flags, sweep_flags = _flags("train"), _flags("sweep")
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in train_flags, f.name
        axis = f.metadata["axis"]
        expected = "--" + (axis or f.name).replace("_", "-")
        assert expected in sweep_flags, f.name
        if axis:  # the singular flag is the train's; a sweep takes the list only
            assert "--" + f.name.replace("_", "-") not in sweep_flags or f.name == axis


def test_train_flags_round_trip_into_the_config() -> None:
    argv = [
        "train",
        "--arch",
        "plain",
        "--depth",
        "14",
        "--width",
        "4",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--steps",
        "7",
        "--zero-init-residual",
        "--seed",
        "5",
        "--dtype",
        "bfloat16",
    ]
    args = make_parser().parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    made = TrainConfig(**{k: v for k, v in given.items() if v is not None}).validate()
    assert (
        made
        == TrainConfig(
            arch="plain",
            depth=14,
            width=4,
            optimizer="adam",
            lr=0.003,
            steps=7,
            zero_init_residual=True,
            seed=5,
            dtype="bfloat16",
        ).validate()
    )


def test_optimizer_is_a_sweep_axis_a_toml_key_and_a_report_facet(tmp_path: Path) -> None:
    assert LIST_FLAGS["optimizers"] == "optimizer" and DEFAULT_GRID["optimizer"] == ["sgd"]
    assert "optimizers" in CONFIG_KEYS and "optimizer" not in RUN_KEYS and "optimizer" in FACET_OPTIONS
    toml = tmp_path / "s.toml"
    toml.write_text('optimizers = ["sgd", "adam"]\ndepths = [8]\narchs = ["plain"]\nsteps = 3\n')
    opts = read_config(toml)
    spec = SweepSpec(grid={LIST_FLAGS[k]: v for k, v in opts.items() if k in LIST_FLAGS}, fixed={"steps": 3})
    assert sorted(c.optimizer for c in spec.configs()) == ["adam", "sgd"]
    with pytest.raises(UsageError, match="unknown optimizer 'rmsprop'; allowed: sgd, adam"):
        SweepSpec(grid={"optimizer": ["rmsprop"]}).configs()


def test_the_default_optimizer_keeps_every_run_id() -> None:
    assert TrainConfig(arch="plain", depth=8).run_id() == TrainConfig(arch="plain", depth=8, optimizer="sgd").run_id()
    assert TrainConfig(arch="plain", depth=8).run_id() != TrainConfig(arch="plain", depth=8, optimizer="adam").run_id()


def test_adam_run_matches_a_hand_written_adam_loop(data_dir: Path) -> None:
    """train(optimizer="adam") takes the same steps as torch.optim.Adam in a plain loop."""
    cfg = TrainConfig(
        arch="residual",
        depth=8,
        width=4,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-4,
        steps=4,
        batch_size=32,
        train_subset=256,
        test_subset=100,
        seed=3,
        device="cpu",
        data_dir=str(data_dir),
        channels_last=False,  # the loop below is contiguous: bit for bit the same kernels
    )
    result = train(cfg, progress=False)

    torch.manual_seed(cfg.seed)
    model = build_model("residual", 8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    data = load_split(True, str(data_dir), 256, torch.device("cpu"))
    batches = endless_batches(len(data), 32, cfg.seed)
    for _ in range(4):
        _, idx = next(batches)
        opt.zero_grad()
        F.cross_entropy(model(data.images[idx]), data.labels[idx]).backward()
        opt.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result.model_state[name], value, rtol=0, atol=0, msg=name)


def test_checks_live_once_and_agree_with_the_models() -> None:
    for build, message in [
        (lambda: build_model("plain", depth=9), "depth 9 is not of the form 6n+2"),
        (lambda: TrainConfig(depth=9).validate(), "depth 9 is not of the form 6n+2"),
        (lambda: build_model("plain", norm="group"), "unknown norm 'group'"),
        (lambda: TrainConfig(norm="group").validate(), "unknown norm 'group'"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            build()
