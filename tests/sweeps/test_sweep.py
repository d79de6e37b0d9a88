"""Depth sweeps on real MNIST: the grid, validation, resume after SIGKILL, faults, Ray vs local."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import dead_pid

from resgrad.cli import main
from resgrad.config import TrainConfig
from resgrad.errors import UsageError
from resgrad.rundir import check_run
from resgrad.sweeps.folder import load_spec
from resgrad.sweeps.grid import DEFAULT_GRID, GRID_OPTIONS, SweepSpec
from resgrad.sweeps.sweep import SUMMARY_COLUMNS, run_sweep, summary_row

# and the manifest, .resgrad.json: every file resgrad wrote there, with its SHA-256
RUN_FILES = {"config.json", "metrics.csv", "grad_norms.parquet", "model.pt", "summary.json", ".resgrad.json"}


def tiny(data_dir: Path, steps: int | None = 6) -> list[str]:
    """Single-run flags for runs of about a second (steps None: one epoch of 256 images, 2 steps)."""
    length = ["--steps", str(steps)] if steps else []
    return [
        "--widths",
        "2",
        *length,
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
        "--data-dir",
        str(data_dir),
        "--quiet",
    ]


def snapshot(run_dir: Path) -> dict[str, tuple[int, str]]:
    """Each file of a run folder: (mtime in ns, sha256 of its bytes)."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in run_dir.iterdir()}


def run_folders(out: Path) -> list[Path]:
    """The run folders a reader would take as runs (hidden temp folders excluded)."""
    runs = out / "runs"
    return sorted(p for p in runs.iterdir() if not p.name.startswith(".")) if runs.exists() else []


def pool_workers(driver: int) -> set[int]:
    """The live process-pool workers of process ``driver``: its children started by multiprocessing's spawn."""
    workers = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if ppid == driver and b"spawn_main" in cmdline:
            workers.add(int(proc.name))
    return workers


def wait_for(found, proc: subprocess.Popen, seconds: float = 180):
    """Poll ``found()`` until it returns something true while ``proc`` runs; return that."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not found within {seconds} s while the sweep ran (exit code {proc.poll()})")


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds pool workers in /proc (Linux)")


# ---------------------------------------------------------------- the grid


def test_grid_is_the_cross_product_with_fixed_options_on_every_run() -> None:
    spec = SweepSpec(
        grid={"arch": ["plain", "residual"], "depth": [8, 14], "seed": [0, 1]}, fixed={"steps": 7, "batch_size": 32}
    )
    configs = spec.configs()
    expected = set(itertools.product(["plain", "residual"], [8, 14], [0, 1]))
    assert len(configs) == 8 and {(c.arch, c.depth, c.seed) for c in configs} == expected
    assert len({c.run_id() for c in configs}) == 8
    for c in configs:  # options left out of the grid take the defaults; fixed ones apply everywhere
        assert (c.width, c.norm, c.activation, c.init, c.lr) == (16, "none", "relu", "default", 0.01)
        assert (c.steps, c.batch_size) == (7, 32)
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).configs() == configs
    assert len(SweepSpec(grid={}).configs()) == len(DEFAULT_GRID["arch"]) * len(DEFAULT_GRID["depth"]) == 6


def test_a_fixed_arch_ignores_depth_so_it_runs_once() -> None:
    configs = SweepSpec(grid={"arch": ["seed-plain", "residual"], "depth": [8, 14]}).configs()
    assert sorted(c.arch for c in configs) == ["residual", "residual", "seed-plain"]


@pytest.mark.parametrize(
    ("grid", "fixed", "message"),
    [
        ({"depth": []}, {}, "empty list"),
        ({"depth": [8, 10]}, {}, "depth 10 is not of the form 6n+2"),
        ({"depth": [8.0]}, {}, "depth must be a whole number"),
        ({"arch": ["resnet"]}, {}, "unknown arch 'resnet'"),
        ({"colour": ["red"]}, {}, "unknown grid option(s) colour"),
        ({"lr": [0.1, -1]}, {}, "lr must be a finite number > 0"),
        ({"seed": [-1]}, {}, "seed must be a whole number from 0 to 2**63-1"),
        ({}, {"stepz": 3}, "unknown run option 'stepz'"),
        ({}, {"depth": 8}, "depth is a grid option"),
        ({}, {"steps": 3, "epochs": 1}, "give epochs or steps, not both"),
        ({}, {"steps": "3"}, "steps must be a whole number"),
    ],
)
def test_bad_grid_raises_usage_error_naming_it(grid: dict, fixed: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        SweepSpec(grid=grid, fixed=fixed).configs()
    assert message in str(info.value)


# ---------------------------------------------------------------- the command: bad input


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["--depths", "8", "20", "21"], None, "depth 21 is not of the form 6n+2"),
        (["--archs", "resnet"], None, "unknown arch 'resnet'"),
        (["--norms", "layer"], None, "unknown norm 'layer'"),
        (["--widths", "0"], None, "width must be a whole number >= 1"),
        (["--seeds", "-3"], None, "seed must be a whole number from 0 to 2**63-1"),
        (["--ray-address", "auto"], None, "only applies to --executor ray"),
        (["--workers", "100000000"], None, "workers must be a whole number from 1 to 1,024, got 100000000."),
        ([], "workers = 100000000\n", "workers must be a whole number from 1 to 1,024"),
        ([], "gpus_per_run = 'one'\n", "key 'gpus_per_run' in"),
        ([], "depths = [8, 14\n", "is not valid TOML"),
        ([], "depths = []\n", "depth is an empty list"),
        ([], "depths = ['eight']\n", "depth must be a whole number"),
        ([], "colour = 'red'\n", "unknown key 'colour'"),
        ([], "steps = 3\nepochs = 1\n", "give epochs or steps, not both"),
        ([], "workers = 'two'\n", "must be a whole number"),
        ([], "executor = 'dask'\n", "unknown executor 'dask'"),
    ],
)
def test_bad_sweep_input_exits_2_and_writes_nothing(
    args: list[str], toml: str | None, message: str, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), *tiny(data_dir, steps=None), *args]
    if toml is not None:
        (tmp_path / "sweep.toml").write_text(toml)
        argv += ["--config", str(tmp_path / "sweep.toml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("resgrad sweep: error: ") and message in err
    assert not out.exists()


def test_unknown_toml_key_error_lists_the_allowed_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "s.toml").write_text("dephts = [8]\n")
    assert main(["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'dephts'" in err and "depths" in err and "batch_size" in err and "workers" in err


def test_missing_out_and_missing_config_file_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "--depths", "8"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["sweep", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read sweep config" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_not_a_sweep_is_left_alone(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["sweep", "--out", str(tmp_path), "--depths", "8", *tiny(data_dir)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_missing_ray_is_a_usage_error_naming_the_extra(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    out = tmp_path / "o"
    assert main(["sweep", "--out", str(out), "--executor", "ray", *tiny(data_dir)]) == 2
    assert "pip install 'resgrad[ray]'" in capsys.readouterr().err and not out.exists()


def test_flags_override_the_toml_file(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    (tmp_path / "s.toml").write_text(
        f'out = "{out}"\narchs = ["residual"]\ndepths = [8, 14, 20]\nwidths = 2\nsteps = 50\nbatch_size = 16\n'
        f'train_subset = 256\ntest_subset = 200\nthreads = 1\ndevice = "cpu"\ndata_dir = "{data_dir}"\n'
    )
    assert main(["sweep", "--config", str(tmp_path / "s.toml"), "--depths", "8", "--epochs", "1", "--quiet"]) == 0
    spec = load_spec(out)
    assert spec.grid["depth"] == [8] and spec.grid["width"] == [2] and spec.grid["arch"] == ["residual"]
    assert spec.fixed["epochs"] == 1 and "steps" not in spec.fixed and spec.fixed["batch_size"] == 16
    summary = pd.read_csv(out / "summary.csv")
    assert summary.steps.tolist() == [16]  # 1 epoch of 256 images in batches of 16


# ---------------------------------------------------------------- the sweep folder, resume, faults


@pytest.mark.slow
def test_sigkill_mid_sweep_loses_no_finished_run_and_a_rerun_completes(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--out",
        str(out),
        "--archs",
        "plain",
        "residual",
        "--depths",
        "8",
        "14",
        *tiny(data_dir, steps=25),
    ]
    proc = subprocess.Popen([sys.executable, "-m", "resgrad", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not run_folders(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()  # still running: killed in the middle
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    finished = run_folders(out)
    assert 1 <= len(finished) < 4
    for run in finished:  # a folder that looks like a run is a whole run
        assert {p.name for p in run.iterdir()} == RUN_FILES
        assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    if (out / "summary.csv").exists():
        assert set(pd.read_csv(out / "summary.csv").run_id) <= {p.name for p in finished}
    before = {run.name: snapshot(run) for run in finished}

    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary.status == "complete").all()
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert {p.name for p in run_folders(out)} == set(summary.run_id)
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # temp folders cleaned away
    for name, files in before.items():  # skipped, not retrained or rewritten
        assert snapshot(out / "runs" / name) == files


@pytest.mark.slow
def test_ctrl_c_stops_a_pool_sweep_at_once_and_a_rerun_completes(tmp_path: Path, data_dir: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole process group: driver and workers."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--archs", "plain", "residual", "--depths", "8", "14", "--workers", "2"]
    argv += tiny(data_dir, steps=200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resgrad", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        # Two of the four runs finished: both workers are past their start-up (a Ctrl-C while a worker still
        # imports torch is another case) and train the last two runs. A fixed sleep was too short on a busy machine.
        wait_for(lambda: len(run_folders(out)) >= 2, proc)
        assert proc.poll() is None and len(pool_workers(proc.pid)) == 2, proc.stderr.read().decode()
        workers = children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    assert rc == 130 and "interrupted" in err and "Traceback" not in err, err
    assert "worker process died" not in err  # no new pool was started for the interrupted runs
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]
    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary.status == "complete").all()


def children(pid: int) -> list[int]:
    """The ids of a process's children (Linux /proc)."""
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir() if tasks.exists() else []:
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_run_folder_caught_between_two_renames_is_put_back(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--archs", "residual", "--depths", "8", *tiny(data_dir)]
    assert main(argv) == 0
    (run,) = run_folders(out)
    files = snapshot(run)
    # What a kill leaves inside atomic_dir: the old folder set aside, a half-written new one, by a process now gone.
    pid = dead_pid()
    os.replace(run, run.with_name(f".resgrad-old-{pid}-{run.name}"))
    half = out / "runs" / f".resgrad-tmp-{pid}-{run.name}-abc12345"
    half.mkdir()
    (half / "config.json").write_text("{}")
    capsys.readouterr()
    assert main(argv[:-1]) == 0  # without --quiet: read the end line
    assert "(0 run now, 1 already done)" in capsys.readouterr().out
    assert snapshot(run) == files and not half.exists()


@pytest.mark.slow
def test_a_diverging_run_is_recorded_and_the_others_complete(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--out",
        str(out),
        "--archs",
        "plain",
        "--depths",
        "8",
        "14",
        "--lrs",
        "0.05",
        "1e6",
        "--workers",
        "2",
        *tiny(data_dir, steps=10),
        "--widths",
        "4",
    ]  # width 2 can die quietly instead
    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4
    assert (summary.status == summary.lr.map({0.05: "complete", 1e6: "diverged"})).all()
    assert summary[summary.status == "complete"].final_test_acc.notna().all()
    assert summary.error.isna().all()
    for run_id in summary.run_id:
        assert {p.name for p in (out / "runs" / run_id).iterdir()} == RUN_FILES
    diverged = json.loads((out / "runs" / summary.run_id[summary.lr == 1e6].iloc[0] / "summary.json").read_text())
    assert diverged["diverged_at_step"] is not None and diverged["steps"] < 10


@pytest.mark.slow
@needs_proc
def test_a_pool_worker_that_dies_does_not_stop_the_sweep(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--out",
        str(out),
        "--archs",
        "residual",
        "--depths",
        "8",
        "--seeds",
        "0",
        "1",
        "2",
        "--workers",
        "2",
        *tiny(data_dir, steps=20),
    ]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "resgrad", *argv], stdout=subprocess.DEVNULL, stderr=err)
    try:
        (first,) = wait_for(lambda: run_folders(out), proc)[:1]
        files = snapshot(first)
        # The workers hold the other runs now: one of them is killed, as if for memory.
        os.kill(min(wait_for(lambda: pool_workers(proc.pid), proc)), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert "a worker process died" in (tmp_path / "stderr.txt").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 and (summary.status == "complete").all()
    for run in run_folders(out):
        assert {p.name for p in run.iterdir()} == RUN_FILES
    assert snapshot(first) == files  # finished before the death: kept, not rerun


@pytest.mark.slow
@needs_proc
def test_a_run_whose_worker_dies_twice_is_recorded_as_failed(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    # Far longer than the test: each of its workers is killed long before it could finish.
    argv = [
        "sweep",
        "--out",
        str(out),
        "--archs",
        "residual",
        "--depths",
        "8",
        "--workers",
        "2",
        *tiny(data_dir, steps=100_000),
    ]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "resgrad", *argv], stdout=subprocess.DEVNULL, stderr=err)
    killed: set[int] = set()
    try:
        for _ in range(2):  # as the issue asks: retried once after a death, failed after the second
            worker = min(wait_for(lambda: pool_workers(proc.pid) - killed, proc))
            os.kill(worker, signal.SIGKILL)
            killed.add(worker)
        assert proc.wait(timeout=120) == 1  # some run failed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert (tmp_path / "stderr.txt").read_text().count("a worker process died") == 2
    summary = pd.read_csv(out / "summary.csv")
    assert summary.status.tolist() == ["failed"]
    assert summary.error[0] == "its worker process died 2 times (killed, or out of memory?)"
    (run,) = run_folders(out)
    assert {p.name for p in run.iterdir()} == {"config.json", "summary.json", ".resgrad.json"}


def test_a_raising_run_is_recorded_as_failed_and_retried_on_rerun(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every run raises inside train() (damaged MNIST no longer gets this far: the pre-flight names it).
    def broken(config, progress=None):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr("resgrad.sweeps.executors.train", broken)
    out = tmp_path / "sweep"
    grid = ["sweep", "--out", str(out), "--archs", "residual", "--depths", "8", "--seeds", "0", "1"]
    assert main([*grid, *tiny(data_dir)]) == 1
    assert "0 complete, 0 diverged, 2 failed" in caplog.text  # a warning, as the exit code says
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.status == "failed").all() and summary.error.str.contains("the GPU caught fire").all()
    monkeypatch.undo()
    for run_id in summary.run_id:
        assert {p.name for p in (out / "runs" / run_id).iterdir()} == {"config.json", "summary.json", ".resgrad.json"}

    assert main([*grid, *tiny(data_dir)[:-1]]) == 0  # the same runs, retried, now whole
    assert "2 complete, 0 diverged, 0 failed (2 run now, 0 already done)" in capsys.readouterr().out
    again = pd.read_csv(out / "summary.csv")
    assert again.run_id.tolist() == summary.run_id.tolist() and (again.status == "complete").all()


def test_a_grown_grid_runs_only_the_new_points_and_force_reruns(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    spec = lambda depths: SweepSpec(  # noqa: E731
        grid={"arch": ["residual"], "depth": depths, "width": [2]},
        fixed={
            "steps": 4,
            "train_subset": 256,
            "test_subset": 200,
            "threads": 1,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    first = run_sweep(spec([8]), out, progress=False)
    (old,) = first.run_id
    files = snapshot(out / "runs" / old)

    grown = run_sweep(spec([8, 14]), out, progress=False)
    assert (grown.attrs["ran"], grown.attrs["skipped"]) == (1, 1)
    assert grown.depth.tolist() == [8, 14] and (grown.status == "complete").all()
    assert snapshot(out / "runs" / old) == files
    assert load_spec(out).grid["depth"] == [8, 14]
    assert pd.read_csv(out / "summary.csv").run_id.tolist() == grown.run_id.tolist()

    forced = run_sweep(spec([8, 14]), out, force=True, progress=False)
    assert (forced.attrs["ran"], forced.attrs["skipped"]) == (2, 0)
    assert snapshot(out / "runs" / old)["summary.json"][0] != files["summary.json"][0]  # rewritten
    # Same config, same thread count: the rerun reproduces the numbers.
    cols = ["final_test_acc", "final_test_loss", "final_train_loss"]
    pd.testing.assert_frame_equal(forced[cols], grown[cols])


def test_more_torch_threads_than_cores_is_warned(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cores = os.cpu_count()
    spec = lambda threads: SweepSpec(  # noqa: E731
        grid={"arch": ["residual"], "depth": [8], "width": [2]},
        fixed={
            "steps": 2,
            "train_subset": 64,
            "test_subset": 100,
            "threads": threads,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    with caplog.at_level(logging.WARNING, logger="resgrad.sweeps.sweep"):
        run_sweep(spec(cores), tmp_path / "fits", progress=False)
        assert "torch threads" not in caplog.text
        run_sweep(spec(cores + 1), tmp_path / "over", progress=False)
    assert f"workers=1 x threads={cores + 1} = {cores + 1} torch threads on {cores} CPU cores" in caplog.text


def test_summary_row_takes_every_column_from_the_run_summary() -> None:
    config = TrainConfig(arch="plain", depth=14, width=4, lr=0.1, seed=3).validate()
    summary = {"run_id": "ignored", "status": "diverged", "steps": 7, "error": None, "params": 123, "epochs": 0.5}
    row = summary_row(config, summary)
    assert list(row) == SUMMARY_COLUMNS
    assert row["run_id"] == config.run_id()  # the config's, whatever the summary says
    assert (row["arch"], row["depth"], row["lr"], row["seed"]) == ("plain", 14, 0.1, 3)
    assert (row["status"], row["steps"], row["final_test_acc"]) == ("diverged", 7, None)


# ---------------------------------------------------------------- executors agree


@pytest.mark.slow
def test_ray_and_process_pool_give_the_same_numbers_as_in_process(tmp_path: Path, data_dir: Path) -> None:
    spec = SweepSpec(
        grid={"arch": ["plain", "residual"], "depth": [8], "width": [2]},
        fixed={
            "steps": 6,
            "record_every": 2,
            "train_subset": 256,
            "test_subset": 200,
            "threads": 1,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    local = run_sweep(spec, tmp_path / "local", executor="local", workers=1, progress=False)
    pool = run_sweep(spec, tmp_path / "pool", executor="local", workers=2, progress=False)
    ray_ = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, progress=False)
    same = ["run_id", *GRID_OPTIONS, "status", "final_test_acc", "final_test_loss", "final_train_loss", "steps"]
    assert (local.status == "complete").all() and len(local) == 2
    for other, name in ((pool, "pool"), (ray_, "ray")):
        pd.testing.assert_frame_equal(other[same], local[same])
        for run_id in local.run_id:
            a, b = tmp_path / "local" / "runs" / run_id, tmp_path / name / "runs" / run_id
            pd.testing.assert_frame_equal(pd.read_csv(b / "metrics.csv"), pd.read_csv(a / "metrics.csv"))
            pd.testing.assert_frame_equal(
                pd.read_parquet(b / "grad_norms.parquet"), pd.read_parquet(a / "grad_norms.parquet")
            )
            assert TrainConfig.from_dict(json.loads((b / "config.json").read_text())).run_id() == run_id
    # Nothing left to run: Ray is not started, but the address is checked all the same (a typo is caught
    # before the day it matters), and the sweep folder is left as it was.
    before = {p: p.read_bytes() for p in (tmp_path / "ray").rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="nothing answers at Ray address ray://127.0.0.1:1"):
        run_sweep(spec, tmp_path / "ray", executor="ray", ray_address="ray://127.0.0.1:1", progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "ray").rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------- damage that must not go unnoticed


def _grid(out: Path, data_dir: Path, *seeds: str) -> list[str]:
    return ["sweep", "--out", str(out), "--archs", "residual", "--depths", "8", "--seeds", *seeds, *tiny(data_dir, 2)]


def _rerun_names_and_mends(out: Path, data_dir: Path, run: Path, seeds: list[str], caplog, why: str) -> None:
    assert main(_grid(out, data_dir, *seeds)) == 0
    assert f"{run.name} is damaged ({why}" in caplog.text and "it runs again" in caplog.text
    assert check_run(run) is None
    summary = pd.read_csv(out / "summary.csv").set_index("run_id")
    assert summary.loc[run.name, "status"] == "complete"


def test_a_damaged_run_of_an_earlier_grid_is_named_and_runs_again(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "sweep"
    assert main(_grid(out, data_dir, "0", "1")) == 0
    run = next(p for p in run_folders(out) if "-s1-" in p.name)
    os.truncate(run / "metrics.csv", 20)  # `truncate -s 20`
    # A narrower grid: seed 1 is no longer in it, but its run is still the sweep's.
    _rerun_names_and_mends(out, data_dir, run, ["0"], caplog, "metrics.csv has 20 bytes")


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        ("{not json", "summary.json cannot be read"),
        ("final_test_acc 0.99", "summary.json "),  # valid JSON, a better number: its size or SHA-256 tells
    ],
)
def test_a_summary_json_damaged_or_edited_is_named_and_runs_again(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture, edit: str, why: str
) -> None:
    out = tmp_path / "sweep"
    assert main(_grid(out, data_dir, "0")) == 0
    (run,) = run_folders(out)
    if edit.startswith("{"):
        (run / "summary.json").write_text(edit)
    else:
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "final_test_acc": 0.99}, indent=2))
    _rerun_names_and_mends(out, data_dir, run, ["0"], caplog, why)
    assert json.loads((run / "summary.json").read_text())["final_test_acc"] != 0.99
