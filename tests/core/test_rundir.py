"""The run folder: what `train --out` may replace (a run, with --force; never a user's file or a sweep), and how
check_run tells a whole run folder from a damaged one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import ROOT, copy_sweep, exit_code, one_sentence, run_cli, snapshot, tiny_run

from resgrad.config import TrainConfig
from resgrad.errors import UsageError
from resgrad.ownership import MARKER, OWN_NAMES
from resgrad.report.sweepdata import load_sweep
from resgrad.rundir import check_run, save_run
from resgrad.train import train

# ---------------------------------------------------------------- what train --out may replace


def test_train_into_a_folder_with_user_files_is_refused_and_keeps_them(tmp_path: Path, data_dir: Path) -> None:
    mine = tmp_path / "o" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.tex").write_text("t\n")
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(mine)])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{mine} holds files resgrad did not write (notes.tex); give --out a new or empty folder."
    )
    assert sorted(os.listdir(mine)) == ["notes.tex"] and (mine / "notes.tex").read_text() == "t\n"


def test_train_into_a_sweep_folder_is_refused(tiny_sweep: Path, tmp_path: Path, data_dir: Path) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    before = snapshot(sweep)
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(sweep)])
    assert code == 2 and "is a resgrad sweep folder, not a run folder" in one_sentence(err, "train")
    assert snapshot(sweep) == before


def test_an_existing_run_is_replaced_only_with_force_and_never_with_a_user_file(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", *tiny_run(data_dir), "--out", str(run)])[0] == 0
    first = snapshot(run)
    code, err = run_cli(["train", *tiny_run(data_dir), "--seed", "1", "--out", str(run)])
    assert code == 2 and "already holds a run; add --force" in one_sentence(err, "train")
    assert snapshot(run) == first

    assert run_cli(["train", *tiny_run(data_dir), "--seed", "1", "--out", str(run), "--force"])[0] == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 1 and snapshot(run) != first

    (run / "notes.txt").write_text("mine")
    replaced = snapshot(run)
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(run), "--force"])
    assert code == 2 and "also holds files resgrad did not write (notes.txt)" in one_sentence(err, "train")
    assert snapshot(run) == replaced


def test_save_run_in_python_refuses_a_folder_with_other_files(tmp_path: Path, data_dir: Path) -> None:
    result = train(
        TrainConfig(
            arch="residual",
            depth=8,
            width=2,
            steps=2,
            train_subset=64,
            test_subset=50,
            threads=1,
            device="cpu",
            data_dir=str(data_dir),
        ),
        progress=False,
    )
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2\n")
    with pytest.raises(UsageError, match="holds files resgrad did not write"):
        save_run(result, folder)
    assert sorted(os.listdir(folder)) == ["data.csv"]


def test_train_into_a_file_is_refused_before_training(tmp_path: Path, data_dir: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("my results\n")
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(target)])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{target} is a file, not a run folder; give --out a new or empty folder (the file is left as it is)."
    )
    assert sorted(os.listdir(tmp_path)) == ["results.txt"] and target.read_text() == "my results\n"


def test_the_run_files_train_help_lists_are_those_save_run_writes(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    sentence = text[text.index("The run directory holds") : text.index("Steps count from 0")]
    listed = re.findall(r"[\w-]+\.(?:json|csv|parquet|pt)\b", sentence)
    assert listed == [name for name in OWN_NAMES["run"] if name != MARKER]  # made from the list
    config = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=2,
        train_subset=64,
        test_subset=50,
        device="cpu",
        data_dir=str(data_dir),
    )
    save_run(train(config, progress=False), tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == sorted([*listed, MARKER])  # and the manifest


# ---------------------------------------------------------------- whole or damaged


def test_folders_saved_before_the_record_are_checked_by_their_contents(tiny_sweep: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(tiny_sweep, tmp_path)
    run = sorted((sweep / "runs").iterdir())[0]
    summary = json.loads((run / "summary.json").read_text())
    del summary["files"]  # as resgrad wrote summary.json before it kept a record
    (run / "summary.json").write_text(json.dumps(summary))
    (run / MARKER).unlink()  # and before it kept a manifest
    assert check_run(run) is None
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1])  # a whole row missing
    assert check_run(run) == "metrics.csv holds 3 whole rows for 4 steps"
    (run / "metrics.csv").write_text(text)
    (run / "grad_norms.parquet").write_bytes((run / "grad_norms.parquet").read_bytes()[:300])
    assert check_run(run) is not None


def test_the_committed_results_count_as_whole_and_their_reports_load() -> None:
    sweeps = sorted(p.parent for p in (ROOT / "results").glob("*/sweep.json"))
    assert sweeps, "no committed sweep under results/"
    for sweep in sweeps:
        for run in sorted((sweep / "runs").iterdir()):
            assert check_run(run) is None, run
        runs = load_sweep(sweep).runs
        assert runs["status"].isin(["complete", "diverged"]).all(), sweep  # trained: none damaged, failed or missing
