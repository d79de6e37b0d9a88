"""One declaration per option: flags, sweep axes, TOML keys and report facets all come from TrainConfig."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import one_sentence, run_cli

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


# ---------------------------------------------------------------- numbers the run's float32 weights cannot take

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the reference: torch's own


@pytest.mark.parametrize(
    ("flags", "name", "value", "top", "why"),
    [
        (["--lr", "1e39"], "lr", 1e39, FLOAT32_MAX, "the largest float32: "),
        (["--lr", "1e308"], "lr", 1e308, FLOAT32_MAX, "the largest float32: "),
        (["--weight-decay", "1e308"], "weight-decay", 1e308, FLOAT32_MAX, "the largest float32: "),
        (["--momentum", "1e39"], "momentum", 1e39, FLOAT32_MAX, "the largest float32: "),
        (
            ["--optimizer", "adam", "--lr", "3.5e37"],
            "lr",
            3.5e37,
            FLOAT32_MAX / 10,
            "adam's first step is lr / (1 - beta1) = 10 x lr, and ",
        ),
    ],
)
def test_an_optimiser_number_past_float32_is_one_sentence_before_anything_runs(
    tmp_path: Path, flags: list[str], name: str, value: float, top: float, why: str
) -> None:
    code, err = run_cli(["train", *flags, "--out", str(tmp_path / "run")])
    assert code == 2 and one_sentence(err, "train").endswith(
        f"{name} must be at most {top:.4g} ({why}the run's weights are float32 whatever --dtype says), got {value!r}."
    )
    assert not (tmp_path / "run").exists()
    code, err = run_cli(["sweep", *flags, "--out", str(tmp_path / "sweep")])
    assert code == 2 and f"{name} must be at most" in one_sentence(err, "sweep") and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_largest_lr_allowed_trains_to_a_diverged_run_not_a_traceback(data_dir: Path, optimizer: str) -> None:
    config = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=3,
        train_subset=64,
        test_subset=50,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
        optimizer=optimizer,
        lr=FLOAT32_MAX if optimizer == "sgd" else FLOAT32_MAX * (1 - 0.9),  # adam: the largest it takes
        momentum=FLOAT32_MAX if optimizer == "sgd" else 0.5,
        weight_decay=FLOAT32_MAX,
    ).validate()
    assert train(config, progress=False).summary["status"] in ("complete", "diverged")


# ---------------------------------------------------------------- --threads and --workers are bounded everywhere

BOUNDED = {  # each command with --threads or --workers, with what else it needs to parse
    "train": ["train"],
    "sweep": ["sweep", "--out", "{out}"],
    "lesion": ["lesion", "{out}"],
    "shatter": ["shatter", "--out", "{out}"],
    "landscape": ["landscape", "{out}"],
    "bench": ["bench", "--out", "{out}"],
}


def test_every_command_with_threads_is_checked_here() -> None:
    parser = make_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    with_threads = {n for n, p in commands.items() if any("--threads" in a.option_strings for a in p._actions)}
    assert with_threads == set(BOUNDED)


@pytest.mark.parametrize("command", sorted(BOUNDED))
@pytest.mark.parametrize(("flag", "value"), [("--threads", "100000"), ("--threads", "1000000000000")])
def test_threads_past_the_bound_are_one_sentence_for_every_command(
    tmp_path: Path, command: str, flag: str, value: str
) -> None:
    argv = [a.format(out=tmp_path / "out") for a in BOUNDED[command]]
    code, err = run_cli([*argv, flag, value])
    assert code == 2 and one_sentence(err, command).endswith(
        f"threads must be a whole number from 1 to 1,024, got {value}."
    )
    assert not (tmp_path / "out").exists()
