"""TensorBoard export: every scalar read back with TensorBoard's own reader equals the run's files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")  # `make setup` installs it (the tensorboard extra): these run in CI
from helpers import ROOT, exit_code, fill, one_sentence, run_cli, snapshot, tmpfs  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import metadata as hp_metadata  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from resgrad.cli import main  # noqa: E402
from resgrad.gradients import GradientRecorder  # noqa: E402
from resgrad.rundir import load_run, save_run  # noqa: E402

RUN_FLAGS = [
    "--arch",
    "residual",
    "--depth",
    "8",
    "--width",
    "4",
    "--steps",
    "20",
    "--train-subset",
    "1000",
    "--test-subset",
    "500",
    "--record-every",
    "5",
    "--eval-every",
    "10",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]
FINAL_TAGS = {"hparam/final_test_acc", "hparam/final_test_loss", "hparam/final_train_loss"}


def accumulator(run_tb: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_tb), size_guidance={"scalars": 0})  # 0: keep every event
    ea.Reload()
    return ea


def scalars(run_tb: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of one TensorBoard run: tag -> [(step, value)] in file order."""
    ea = accumulator(run_tb)
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def f32(values) -> list[float]:
    """What a float32 event holds for each value (NaN and inf included)."""
    return [float(np.float32(v)) for v in values]


def assert_same(got: list[float], expected: list[float]) -> None:
    np.testing.assert_array_equal(np.array(got), np.array(expected))  # NaN == NaN here


def expected_grad_scalars(norms: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """The documented tags, spelt out by hand: quantity/<index, 3 digits>_<layer>."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in norms.sort_values("step", kind="stable").itertuples():
        out.setdefault(f"{row.quantity}/{row.layer_index:03d}_{row.layer}", []).append((row.step, row.norm))
    return out


def check_run_events(run_dir: Path, run_tb: Path) -> None:
    """Every scalar of ``run_tb`` equals its metrics.csv / grad_norms.parquet / summary.json value, once."""
    got = scalars(run_tb)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    norms = pd.read_parquet(run_dir / "grad_norms.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    tested = metrics[metrics.test_acc.notna()]

    assert [s for s, _ in got["loss/train"]] == metrics.step.tolist()
    assert_same([v for _, v in got["loss/train"]], f32(metrics.train_loss))
    for tag, column in (("loss/test", "test_loss"), ("accuracy/test", "test_acc")) if len(tested) else ():
        assert [s for s, _ in got[tag]] == tested.step.tolist()
        assert_same([v for _, v in got[tag]], f32(tested[column]))
    grads = expected_grad_scalars(norms)
    finals = {tag for tag in FINAL_TAGS if summary[tag.split("/")[1]] is not None}  # none for a diverged run
    tests = {"loss/test", "accuracy/test"} if len(tested) else set()
    assert set(got) == {"loss/train", *tests, *grads, *finals}
    for tag, points in grads.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert_same([v for _, v in got[tag]], f32(v for _, v in points))
    last = summary["steps"] - 1
    for tag in finals:
        assert got[tag] == [(last, float(np.float32(summary[tag.split("/")[1]])))]


def check_hparams(run_dir: Path, run_tb: Path, status: str = "complete") -> None:
    """One HPARAMS session in the run itself, holding the config, with the final metrics as its metrics."""
    content = accumulator(run_tb).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert set(content) == {
        hp_metadata.EXPERIMENT_TAG,
        hp_metadata.SESSION_START_INFO_TAG,
        hp_metadata.SESSION_END_INFO_TAG,
    }
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    config = json.loads((run_dir / "config.json").read_text())
    for name in ("arch", "norm", "activation", "init", "shortcut", "device"):
        assert start.hparams[name].string_value == config[name]
    for name in ("depth", "width", "steps", "batch_size", "lr", "momentum", "seed", "record_every", "train_subset"):
        assert start.hparams[name].number_value == config[name]
    assert start.hparams["status"].string_value == status
    assert "epochs" not in start.hparams and "data_dir" not in start.hparams  # unset / not a hyperparameter
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert {m.name.tag for m in experiment.metric_infos} == FINAL_TAGS


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real 20-step run, trained with --tensorboard: (run folder, its TensorBoard run)."""
    base = tmp_path_factory.mktemp("export")
    run_dir, logdir = base / "run", base / "tb-train"
    assert (
        main(["train", *RUN_FLAGS, "--data-dir", str(data_dir), "--out", str(run_dir), "--tensorboard", str(logdir)])
        == 0
    )
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    assert sorted(p.name for p in logdir.iterdir()) == [run_id]
    return run_dir, logdir / run_id


def test_train_with_tensorboard_writes_every_value_of_the_run_files(trained: tuple[Path, Path]) -> None:
    run_dir, run_tb = trained
    check_run_events(run_dir, run_tb)
    check_hparams(run_dir, run_tb)


def test_export_writes_every_value_and_a_second_export_adds_no_duplicate(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir, _ = trained
    logdir = tmp_path / "tb"
    (logdir / "my-own-run").mkdir(parents=True)  # someone else's TensorBoard run: left alone
    (logdir / "my-own-run" / "events.out.tfevents.1.x").write_bytes(b"not ours")
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    for _ in range(2):
        assert main(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
        assert f"tensorboard --logdir {logdir}" in capsys.readouterr().out
        assert sorted(p.name for p in logdir.iterdir()) == ["my-own-run", run_id]  # no sub-run, no temp folder
        assert len(list((logdir / run_id).glob("events.out.tfevents.*"))) == 1
        check_run_events(run_dir, logdir / run_id)  # each tag's steps exactly once
        check_hparams(run_dir, logdir / run_id)
    assert (logdir / "my-own-run" / "events.out.tfevents.1.x").read_bytes() == b"not ours"


def test_zero_tiny_huge_nan_and_inf_norms_are_written_as_they_are(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = load_run(trained[0])  # saved again with the edge values: a whole run folder that holds them
    norms = result.grad_norms
    edge = [0.0, 1e-40, 1e30, math.inf, math.nan]
    norms.loc[: len(edge) - 1, "norm"] = edge
    save_run(result, run_dir)
    assert main(["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    check_run_events(run_dir, tmp_path / "tb" / run_id)
    got = scalars(tmp_path / "tb" / run_id)
    first = norms.iloc[: len(edge)]
    values = [dict(got[f"{r.quantity}/{r.layer_index:03d}_{r.layer}"])[r.step] for r in first.itertuples()]
    assert values[:3] == [0.0, float(np.float32(1e-40)), float(np.float32(1e30))] and values[3] == math.inf
    assert math.isnan(values[4])


def test_sweep_with_tensorboard_writes_each_run_and_export_skips_missing_ones(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    flags = [
        "--archs",
        "plain",
        "residual",
        "--depths",
        "8",
        "--widths",
        "2",
        "--steps",
        "6",
        "--train-subset",
        "256",
        "--test-subset",
        "200",
        "--record-every",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--data-dir",
        str(data_dir),
        "--out",
        str(sweep),
    ]
    assert main(["sweep", *flags, "--tensorboard", str(tmp_path / "tb")]) == 0
    run_dirs = sorted((sweep / "runs").iterdir())
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [d.name for d in run_dirs]
    for run_dir in run_dirs:
        check_run_events(run_dir, tmp_path / "tb" / run_dir.name)
    # A resumed sweep puts the runs done before into a new log folder too.
    assert main(["sweep", *flags, "--tensorboard", str(tmp_path / "tb2")]) == 0
    assert sorted(p.name for p in (tmp_path / "tb2").iterdir()) == [d.name for d in run_dirs]

    shutil.rmtree(run_dirs[0])
    assert main(["export", str(sweep), "--tensorboard", str(tmp_path / "tb3")]) == 0
    assert [p.name for p in (tmp_path / "tb3").iterdir()] == [run_dirs[1].name]
    assert f"skipped {run_dirs[0].name}: missing" in caplog.text


def test_a_diverged_run_keeps_its_non_finite_loss_and_has_no_final_metrics(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # The folder as train() leaves a run whose loss is inf at step 12: everything up to that step.
    result = load_run(trained[0])
    result.metrics = result.metrics.query("step <= 12").copy()
    result.metrics.loc[result.metrics.step == 12, "train_loss"] = math.inf
    result.grad_norms = result.grad_norms.query("step <= 12")
    summary = result.summary
    summary.update(
        status="diverged",
        final_test_acc=None,
        final_test_loss=None,
        final_train_loss=None,
        steps=13,
        diverged_at_step=12,
    )
    save_run(result, run_dir)
    assert main(["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    run_tb = tmp_path / "tb" / summary["run_id"]
    check_run_events(run_dir, run_tb)
    check_hparams(run_dir, run_tb, status="diverged")
    assert scalars(run_tb)["loss/train"][-1] == (12, math.inf)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-source", "does not exist; give a run folder"),
        ("file-source", "is a file; give a run folder"),
        ("not-a-run", "is neither a run folder (config.json, summary.json) nor a sweep folder (sweep.json)"),
        ("logdir-file", "is a file; give a folder"),
        ("logdir-in-run", "give a folder outside the runs it exports"),
        ("foreign-run-folder", "holds files resgrad did not write (notes.txt); give --tensorboard a new or empty"),
        ("failed-run", "holds no finished run to export"),
    ],
)
def test_bad_export_input_exits_2_with_one_sentence_and_writes_nothing(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    source, logdir = run_dir, tmp_path / "tb"
    if case == "no-source":
        source = tmp_path / "nowhere"
    elif case == "file-source":
        source = run_dir / "metrics.csv"
    elif case == "not-a-run":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "logdir-file":
        logdir = run_dir / "summary.json"
    elif case == "logdir-in-run":
        logdir = run_dir / "tb"
    elif case == "foreign-run-folder":
        (logdir / run_id).mkdir(parents=True)
        (logdir / run_id / "notes.txt").write_text("mine")
    elif case == "failed-run":
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "boom"}))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert exit_code(["export", str(source), "--tensorboard", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_train_refuses_a_bad_log_folder_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tb").write_text("a file")
    assert exit_code(["train", *RUN_FLAGS, "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sweep_refuses_a_log_folder_inside_the_sweep_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    argv = [
        "sweep",
        "--archs",
        "plain",
        "--depths",
        "8",
        "--steps",
        "1",
        "--out",
        str(sweep),
        "--quiet",
        "--tensorboard",
        str(sweep / "tb"),
    ]
    assert exit_code(argv) == 2
    assert "give a folder outside the runs it exports" in capsys.readouterr().err
    assert not sweep.exists()


def test_without_tensorboard_export_says_how_to_install_it(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for argv in (["export", str(trained[0])], ["train", *RUN_FLAGS, "--out", str(tmp_path / "run")]):
        assert exit_code([*argv, "--tensorboard", str(tmp_path / "tb")]) == 2
        assert "tensorboard is not installed; pip install 'resgrad[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()  # refused before training


# ---------------------------------------------------------------- the recorder in a user's loop


def test_log_to_writes_the_last_recorded_norms_equal_to_autograd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reference: dict[str, list[tuple[int, float]]] = {}
    with SummaryWriter(str(tmp_path / "tb")) as writer, GradientRecorder(model, schedule=3, modules=["1"]) as rec:
        for step in range(7):
            x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
            recorded = rec.begin_step(step)
            hidden = model[1](model[0](x))
            hidden.retain_grad()
            loss = nn.functional.cross_entropy(model[2](hidden), y)
            opt.zero_grad()
            loss.backward()
            rec.end_step()
            if recorded:
                rec.log_to(writer, step=100 + step)
                for tag, grad in (
                    ("weight_grad/000_0", model[0].weight.grad),
                    ("weight_grad/001_2", model[2].weight.grad),
                    ("activation_grad/000_1", hidden.grad),
                ):
                    reference.setdefault(tag, []).append((100 + step, grad.double().norm().item()))
            opt.step()
    got = scalars(tmp_path / "tb")
    others = expected_grad_scalars(rec.to_frame().query("quantity not in ['weight_grad', 'activation_grad']"))
    assert set(got) == set(reference) | set(others)
    for tag, points in reference.items():
        assert [s for s, _ in got[tag]] == [100, 103, 106]
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points], rtol=1e-5)
    for tag, points in others.items():  # any further quantity the recorder has: its recorded values
        assert [s for s, _ in got[tag]] == [100, 103, 106]
        assert_same([v for _, v in got[tag]], f32(v for _, v in points))


def readme_loop_example() -> str:
    """The README's plain PyTorch loop with GradientRecorder and SummaryWriter."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (code,) = [b for b in blocks if "rec.log_to(writer)" in b]
    return code


def test_the_readme_loop_example_runs_and_logs_every_recorded_norm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(readme_loop_example(), "README.md", "exec"), namespace)
    frame = namespace["frame"]
    assert isinstance(frame, pd.DataFrame) and sorted(frame.step.unique()) == [0, 5, 10, 15]
    logdirs = [p.parent for p in tmp_path.rglob("events.out.tfevents.*")]
    assert len(logdirs) == 1
    got = scalars(logdirs[0])
    expected = expected_grad_scalars(frame)
    assert {"weight_grad/000_1", "weight_grad/001_3", "activation_grad/000_1"} <= set(expected)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [0, 5, 10, 15]
        assert_same([v for _, v in got[tag]], f32(v for _, v in points))


# ---------------------------------------------------------------- a user's files, damaged runs, full disks


def test_a_file_added_to_an_exported_run_folder_refuses_the_next_export_and_stays(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _ = trained
    logdir = tmp_path / "tb"
    assert exit_code(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    (logdir / run_id / "notes.txt").write_text("mine")
    before = snapshot(logdir)
    code, err = run_cli(["export", str(run_dir), "--tensorboard", str(logdir)])
    assert code == 2 and "holds files resgrad did not write (notes.txt)" in one_sentence(err, "export")
    assert snapshot(logdir) == before


def test_a_users_hidden_copy_of_an_exported_run_in_the_log_folder_is_left_alone(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _ = trained
    logdir = tmp_path / "tb"
    assert exit_code(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    shutil.copytree(logdir / run_id, logdir / ".my-backup-of-run")  # holds resgrad's marks, and is the user's
    backup = snapshot(logdir / ".my-backup-of-run")
    assert exit_code(["export", str(run_dir), "--tensorboard", str(logdir)]) == 0
    assert snapshot(logdir / ".my-backup-of-run") == backup


def _damage(run_dir: Path, how: str) -> None:
    if how == "metrics cut short":
        os.truncate(run_dir / "metrics.csv", 20)
    elif how == "metrics text":
        (run_dir / "metrics.csv").write_text("step,epoch,train_loss,test_loss,test_acc\n0,0,lots,,\n")
    elif how == "grad_norms":
        data = bytearray((run_dir / "grad_norms.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, another SHA-256
        (run_dir / "grad_norms.parquet").write_bytes(bytes(data))
    elif how == "model.pt":
        os.truncate(run_dir / "model.pt", 100)
    elif how == "summary edited":  # valid JSON, a better number: only a checksum of summary.json tells
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "final_test_acc": 0.99}))


DAMAGE = ["metrics cut short", "metrics text", "grad_norms", "model.pt", "summary edited"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_run_is_named_and_not_exported(trained: tuple[Path, Path], tmp_path: Path, how: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    _damage(run_dir, how)
    code, err = run_cli(["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")])
    line = one_sentence(err, "export")
    assert code == 2 and "holds no finished run to export (run: damaged (" in line
    assert not (tmp_path / "tb").exists()


@pytest.fixture(scope="module")
def two_run_sweep(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-sweep") / "sweep"
    flags = ["--archs", "plain", "residual", "--depths", "8", "--widths", "2", "--steps", "3", "--train-subset", "64"]
    flags += ["--test-subset", "50", "--threads", "1", "--device", "cpu", "--quiet", "--data-dir", str(data_dir)]
    assert exit_code(["sweep", *flags, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_run_of_a_sweep_is_skipped_by_name_and_the_rest_exported(
    two_run_sweep: Path, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(two_run_sweep, sweep)
    damaged, whole = sorted((sweep / "runs").iterdir())
    _damage(damaged, how)
    code, err = run_cli(["export", str(sweep), "--tensorboard", str(tmp_path / "tb")])
    assert code == 0 and "Traceback" not in err
    assert [p.name for p in (tmp_path / "tb").iterdir()] == [whole.name]
    assert f"skipped {damaged.name}: damaged (" in caplog.text


def test_a_resumed_sweep_with_tensorboard_reruns_a_damaged_run_and_exports_it(
    two_run_sweep: Path, tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(two_run_sweep, sweep)
    damaged = sorted((sweep / "runs").iterdir())[0]
    _damage(damaged, "metrics text")
    flags = ["--archs", "plain", "residual", "--depths", "8", "--widths", "2", "--steps", "3", "--train-subset", "64"]
    flags += ["--test-subset", "50", "--threads", "1", "--device", "cpu", "--quiet", "--data-dir", str(data_dir)]
    code, err = run_cli(["sweep", *flags, "--out", str(sweep), "--tensorboard", str(tmp_path / "tb")])
    assert code == 0 and "Traceback" not in err
    assert f"{damaged.name} is damaged (metrics.csv" in caplog.text
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted(p.name for p in (sweep / "runs").iterdir())


def test_a_full_disk_in_export_is_one_sentence_without_a_threads_traceback(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _ = trained
    with tmpfs(tmp_path / "disk") as disk:
        logdir = disk / "tb"
        logdir.mkdir()
        fill(disk, leave=8192)  # room for the small files, not for the events: the writer's thread fails
        proc = subprocess.run(
            [sys.executable, "-m", "resgrad", "export", str(run_dir), "--tensorboard", str(logdir)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr
        line = one_sentence(proc.stderr, "export")
        assert "No space left on device (ENOSPC)" in line and "Exception in thread" not in proc.stderr
        assert sorted(os.listdir(logdir)) == []


def test_export_onto_a_read_only_folder_is_bad_input(trained: tuple[Path, Path], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code, err = run_cli(["export", str(trained[0]), "--tensorboard", str(ro / "tb")])
        assert code == 2 and "cannot write in" in one_sentence(err, "export")
        assert os.listdir(ro) == []
