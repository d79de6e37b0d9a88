"""Bad sweep input exits 2 with one sentence before anything is written: non-finite options, a config file
that is not UTF-8, damaged MNIST (found by the preflight, once), a Ray address where nothing answers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import mnist_copy, one_sentence, run_child, run_cli, tiny_grid

from resgrad.errors import UsageError
from resgrad.sweeps.grid import SWEEP_KEYS, SweepOptions, SweepSpec
from resgrad.sweeps.sweep import run_sweep


def test_non_finite_sweep_options_exit_2(tmp_path: Path, data_dir: Path) -> None:
    code, err = run_cli(["sweep", *tiny_grid(data_dir), "--lrs", "0.1", "nan", "--out", str(tmp_path / "s")])
    assert code == 2 and one_sentence(err, "sweep").endswith("lr must be a finite number, got nan.")
    (tmp_path / "s.toml").write_text("momentum = inf\n")
    code, err = run_cli(
        ["sweep", *tiny_grid(data_dir), "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")]
    )
    assert code == 2 and one_sentence(err, "sweep").endswith("momentum must be a finite number, got inf.")
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]


def test_a_toml_file_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    text = "depths = [8]  # caf\u00e9\n"  # café, in Latin-1: the é is byte 0xE9, not UTF-8
    (tmp_path / "s.toml").write_bytes(text.encode("latin-1"))
    code, err = run_cli(["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert one_sentence(err, "sweep").endswith(
        f"sweep config {tmp_path / 's.toml'} is not UTF-8 text (byte "
        f"{text.index('é')} cannot be decoded); save it as UTF-8."
    )
    assert not (tmp_path / "o").exists()


def test_the_sweep_preflight_names_a_damaged_training_file_once(tmp_path: Path, data_dir: Path) -> None:
    raw = mnist_copy(data_dir, tmp_path)
    gz = raw / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "sweep"
    code, err = run_cli(["sweep", *tiny_grid(tmp_path / "data"), "--seeds", "0", "1", "--out", str(out)])
    assert code == 2 and f"{gz} has MD5 " in one_sentence(err, "sweep")
    assert not out.exists()  # no run started, nothing written


def test_a_ray_address_where_nothing_answers_exits_2_before_writing(tmp_path: Path, data_dir: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    # It used to retry for ever; the timeout only stops a hang from stalling the suite.
    proc = run_child(
        ["sweep", "--out", str(out), "--executor", "ray", "--ray-address", "127.0.0.1:1", *tiny_grid(data_dir)],
        timeout=120,
    )
    assert proc.returncode == 2
    line = one_sentence(proc.stderr, "sweep")
    assert "nothing answers at Ray address 127.0.0.1:1 (Connection refused)" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("workers", 0, "workers must be a whole number from 1 to 1,024, got 0."),
        ("executor", "dask", "unknown executor 'dask'; allowed: local, ray."),
        ("gpus_per_run", 1.5, "gpus-per-run must be 0, a fraction up to 1 (runs share a GPU) or a whole number"),
        ("ray_address", " ", "--ray-address is empty"),
    ],
)
def test_a_sweeps_own_options_are_declared_once_for_flag_toml_and_python(
    tmp_path: Path, data_dir: Path, name: str, value: object, message: str
) -> None:
    """Each of SweepOptions' fields is a flag, a TOML key and run_sweep's argument, with the one check."""
    assert SWEEP_KEYS == ("out", "executor", "workers", "ray_address", "gpus_per_run")
    executor = [] if name in ("executor", "workers") else ["--executor", "ray"]
    flag = ["--" + name.replace("_", "-"), str(value)]
    code, err = run_cli(["sweep", *tiny_grid(data_dir), *executor, *flag, "--out", str(tmp_path / "s")])
    line = one_sentence(err, "sweep")  # argparse says a choice flag's own sentence
    assert code == 2 and (message in line or (name == "executor" and "invalid choice: 'dask'" in line))
    toml = f"{name} = {value!r}\n".replace("'", '"') + ('executor = "ray"\n' if executor else "")
    (tmp_path / "s.toml").write_text(toml)
    code, err = run_cli(
        ["sweep", *tiny_grid(data_dir), "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")]
    )
    assert code == 2 and f"key '{name}' in {tmp_path / 's.toml'}: " in err and message in err
    how = {"executor": "ray"} if executor else {}
    with pytest.raises(UsageError, match=re.escape(message)):
        SweepOptions(**how, **{name: value}).validate()
    with pytest.raises(UsageError, match=re.escape(message)):
        run_sweep(SweepSpec(grid={}), tmp_path / "s", **how, **{name: value})
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]
