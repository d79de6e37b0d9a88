"""`resgrad train` end to end, and its errors (exit code 2, one sentence, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import exit_code

from resgrad.cli import main

SUMMARY_KEYS = {
    "status",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "steps",
    "wall_seconds",
    "images_per_s",
    "params",
    "python_version",
    "torch_version",
    "device_name",
}


def test_train_writes_the_documented_run_directory(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--arch",
            "residual",
            "--depth",
            "8",
            "--width",
            "4",
            "--steps",
            "6",
            "--record-every",
            "2",
            "--eval-every",
            "100",
            "--train-subset",
            "256",
            "--test-subset",
            "100",
            "--threads",
            "1",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "grad_norms.parquet",
        "metrics.csv",
        "model.pt",
        "summary.json",
    ]
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["step", "epoch", "train_loss", "test_loss", "test_acc"]
    assert metrics.step.tolist() == list(range(6)) and metrics.test_acc.notna().tolist() == [False] * 5 + [True]
    norms = pd.read_parquet(out / "grad_norms.parquet")
    assert list(norms.columns) == ["step", "epoch", "layer_index", "layer", "quantity", "norm"]
    assert sorted(norms.step.unique()) == [0, 2, 4, 5]  # every 2 steps, and the last
    assert (norms[norms.quantity == "weight_grad"].groupby("step").size() == 8).all()  # depth 8 = 8 weighted layers
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys() and summary["status"] == "complete" and summary["steps"] == 6
    assert json.loads((out / "config.json").read_text())["depth"] == 8
    assert "complete after 6 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depth", "21"], "depth 21 is not of the form 6n+2 with n >= 1; the nearest valid depths are 20 and 26"),
        (["--depth", "twenty"], "expected a whole number, got 'twenty'"),
        (["--width", "0"], "width must be a whole number >= 1, got 0."),
        (["--arch", "resnet50"], "unknown arch 'resnet50'; allowed: plain, residual, seed-plain, seed-residual."),
        (["--norm", "group"], "unknown norm 'group'; allowed: none, batch."),
        (["--activation", "gelu"], "unknown activation 'gelu'; allowed: relu, tanh, sigmoid."),
        (["--init", "orthogonal"], "unknown init 'orthogonal'; allowed: default, kaiming, xavier."),
        (["--shortcut", "C"], "invalid choice: 'C'"),
        (["--epochs", "1", "--steps", "5"], "give epochs or steps, not both"),
        (["--lr", "0"], "lr must be a finite number > 0, got 0.0."),
        (["--batch-size", "-3"], "batch-size must be a whole number > 0, got -3."),
    ],
)
def test_bad_input_exits_2_with_one_clear_sentence(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert exit_code(["train", "--steps", "1", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_mnist_exits_2_naming_the_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resgrad",
            "train",
            "--steps",
            "1",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"MNIST is not in {tmp_path / 'nowhere' / 'MNIST' / 'raw'}" in proc.stderr
    assert "t10k-labels-idx1-ubyte.gz" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_asking_for_absent_cuda_exits_2(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert exit_code(["train", "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_help_explains_the_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "resgrad", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for flag in (
        "--arch",
        "--depth",
        "--record-every",
        "--eval-every",
        "--train-subset",
        "--device",
        "--threads",
        "--quiet",
    ):
        assert flag in proc.stdout


@pytest.mark.slow
def test_dtype_help_says_the_recorded_norms_are_float64_as_they_are(data_dir: Path, tmp_path: Path, capsys) -> None:
    assert exit_code(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    dtype_help = text[text.index("--dtype {float32,bfloat16} ", text.index("options:")) :][:400]
    assert "norms are formed in float64" in dtype_help and "norms stay float32" not in dtype_help
    out = tmp_path / "run"
    argv = ["train", "--arch", "residual", "--depth", "8", "--width", "2", "--steps", "2", "--dtype", "bfloat16"]
    argv += ["--train-subset", "64", "--test-subset", "50", "--threads", "1", "--data-dir", str(data_dir)]
    assert exit_code([*argv, "--out", str(out), "--quiet"]) == 0
    assert pd.read_parquet(out / "grad_norms.parquet")["norm"].dtype == "float64"
