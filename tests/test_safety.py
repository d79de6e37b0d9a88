"""Issue 8: a user's files are never lost, and every bad input, bad path and full disk gets one sentence.

One section per numbered case of the issue. Full disks are real: a small tmpfs (root only, skipped
where mount is not permitted) or a file-size limit (RLIMIT_FSIZE) on a child process. A read-only
folder is a read-only tmpfs for root (who can write into a chmod-ed folder) and a chmod-ed folder
otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, exit_code

from resgrad.config import TrainConfig
from resgrad.errors import UsageError
from resgrad.files import prepare_output, write_json
from resgrad.report.sweepdata import load_sweep
from resgrad.rundir import check_run, save_run
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep
from resgrad.train import StepBuffer, train

RUN_FILES = {"config.json", "metrics.csv", "grad_norms.parquet", "summary.json"}  # and model.pt where weights are kept


def tiny_run(data_dir: Path) -> list[str]:
    """`resgrad train` flags for a run of a second or two."""
    return [
        "--arch",
        "residual",
        "--depth",
        "8",
        "--width",
        "2",
        "--steps",
        "3",
        "--record-every",
        "1",
        "--train-subset",
        "256",
        "--test-subset",
        "100",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--quiet",
    ]


def tiny_grid(data_dir: Path) -> list[str]:
    """`resgrad sweep` flags for a grid of one run of a second or two."""
    return [
        "--archs",
        "residual",
        "--depths",
        "8",
        "--widths",
        "2",
        "--steps",
        "3",
        "--record-every",
        "1",
        "--train-subset",
        "256",
        "--test-subset",
        "100",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--quiet",
    ]


TINY_BENCH = [
    "--devices",
    "cpu",
    "--archs",
    "plain",
    "--depths",
    "8",
    "--widths",
    "2",
    "--batch-sizes",
    "4",
    "--modes",
    "forward",
    "--min-run-time",
    "0.01",
    "--warmup",
    "0",
    "--threads",
    "1",
    "--quiet",
]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of `resgrad ARGV` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = exit_code(argv)
    return code, err.getvalue()


def run_child(
    argv: list[str], file_size_limit: int | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m resgrad ARGV` in a child process, optionally with writes capped at ``file_size_limit`` bytes."""

    def limit() -> None:  # in the child: a write past the limit fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "resgrad", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if file_size_limit is not None else None,
        env={**os.environ, **(env or {})},
    )


def one_sentence(stderr: str, command: str) -> str:
    """The error line of a command that failed cleanly: one line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"resgrad {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """resgrad's temp names left anywhere under ``folder``."""
    return [str(p) for p in folder.rglob(".resgrad-*")]


def strict_json(path: Path) -> object:
    """Parse as strict JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished sweep of two tiny runs (depths 8 and 14), made once; tests copy it."""
    out = tmp_path_factory.mktemp("safety") / "sweep"
    spec = SweepSpec(
        grid={"arch": ["residual"], "depth": [8, 14], "width": [2]},
        fixed={
            "steps": 4,
            "record_every": 1,
            "eval_every": 2,
            "train_subset": 256,
            "test_subset": 100,
            "threads": 1,
            "device": "cpu",
            "data_dir": str(data_dir),
        },
    )
    assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete", "complete"]
    return out


def copy_sweep(sweep_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep_dir, dst)
    return dst


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB filesystem of its own (tmpfs), unmounted after the test."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=1m")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte with a file of the test's own."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for block in (4096, 1):  # then what the last block left room for
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder nobody here can write in: a read-only tmpfs for root, else a folder without write permission."""
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        _mount_tmpfs(folder, "ro,size=64k")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


# ---------------------------------------------------------------- the rule for every output folder


@pytest.mark.parametrize(
    ("kind", "files", "force", "allowed"),
    [
        ("run", [], False, True),  # an empty folder
        ("run", ["config.json", "summary.json", "metrics.csv"], False, False),  # a run: needs force
        ("run", ["config.json", "summary.json", "metrics.csv"], True, True),
        ("run", ["config.json", "summary.json", "notes.tex"], True, False),  # force never deletes a user's file
        ("run", ["notes.tex"], True, False),
        ("run", ["sweep.json"], True, False),  # a sweep is not a run
        ("report", ["report.md", "report.html", "figures/a.png", "tables/t.csv"], False, True),
        ("report", ["report.md", "thesis.tex"], False, False),
        ("report", ["report.md", "figures/photo.jpg"], False, False),
        ("sweep", ["sweep.json", "summary.csv", "PROVENANCE.md"], False, True),  # written into: other files stay
        ("sweep", [".lock"], False, True),
        ("sweep", ["summary.csv"], False, False),
        ("bench", ["bench.csv", "gpu.log"], False, True),
        ("bench", ["bench.partial.csv"], False, True),
        ("bench", ["bench.md"], False, False),
        ("bench", ["notes.txt"], False, False),
        ("bench", [".resgrad.json:bench", "gpu.log"], False, True),  # claimed by mark_output before its first file
        ("sweep", [".resgrad.json:bench"], False, False),
    ],
)
def test_prepare_output_allows_only_new_empty_or_own_folders(
    tmp_path: Path, kind: str, files: list[str], force: bool, allowed: bool
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in files:
        name, _, marker = name.partition(":")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps({"kind": marker}) if marker else "x")
    before = snapshot(out)
    if allowed:
        assert prepare_output(out, kind, force=force) == out
    else:
        with pytest.raises(UsageError, match=str(out)):
            prepare_output(out, kind, force=force)
    assert snapshot(out) == before and not leftovers(tmp_path)  # a check changes nothing


# ---------------------------------------------------------------- 1. train --out DIR replaced what DIR held


def test_1_train_out_a_folder_with_user_files_is_refused_and_kept(tmp_path: Path, data_dir: Path) -> None:
    mine = tmp_path / "o" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.tex").write_text("t\n")
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(mine)])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{mine} holds files resgrad did not write (notes.tex); give --out a new or empty folder."
    )
    assert sorted(os.listdir(mine)) == ["notes.tex"] and (mine / "notes.tex").read_text() == "t\n"


def test_1_train_out_a_sweep_folder_is_refused(sweep_dir: Path, tmp_path: Path, data_dir: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    before = snapshot(sweep)
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(sweep)])
    assert code == 2 and "is a resgrad sweep folder, not a run folder" in one_sentence(err, "train")
    assert snapshot(sweep) == before


def test_1_an_existing_run_is_replaced_only_with_force_and_never_with_a_user_file(
    tmp_path: Path, data_dir: Path
) -> None:
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


def test_1_save_run_in_python_refuses_a_folder_with_other_files(tmp_path: Path, data_dir: Path) -> None:
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


def test_1_a_sweep_never_replaces_a_run_folder_holding_a_user_file(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    run = sorted((sweep / "runs").iterdir())[0]
    (run / "notes.txt").write_text("mine")
    before = snapshot(sweep)
    spec = SweepSpec.from_dict(json.loads((sweep / "sweep.json").read_text()))
    with pytest.raises(UsageError, match=f"{run} also holds files resgrad did not write \\(notes.txt\\)"):
        run_sweep(spec, sweep, force=True, progress=False)  # --force reruns every run: checked before the first
    assert snapshot(sweep) == before


# ---------------------------------------------------------------- 2. train --out FILE hid the user's file


def test_2_train_out_a_file_is_refused_before_training(tmp_path: Path, data_dir: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("my results\n")
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(target)])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{target} is a file, not a run folder; give --out a new or empty folder (the file is left as it is)."
    )
    assert sorted(os.listdir(tmp_path)) == ["results.txt"] and target.read_text() == "my results\n"


# ---------------------------------------------------------------- 3. report --out DIR emptied any folder with a report.md


def test_3_report_out_a_folder_with_a_report_md_and_other_files_keeps_them(sweep_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("# my own report\n")
    (mine / "thesis.tex").write_text("\\begin{document}\n")
    before = snapshot(mine)
    code, err = run_cli(["report", str(sweep_dir), "--out", str(mine)])
    assert code == 2
    line = one_sentence(err, "report")
    assert f"{mine} also holds files resgrad did not write (thesis.tex)" in line and "move them away" in line
    assert snapshot(mine) == before


# ---------------------------------------------------------------- 4. a Ray address where nothing answers


def test_4_a_ray_address_where_nothing_answers_exits_2_before_writing(tmp_path: Path, data_dir: Path) -> None:
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


# ---------------------------------------------------------------- 5. resume trusted summary.json alone


def test_5_damaged_runs_are_named_and_rerun_and_the_whole_ones_kept(
    sweep_dir: Path, tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    cut, trimmed = sorted((sweep / "runs").iterdir())
    with open(cut / "grad_norms.parquet", "r+b") as f:  # truncate -s 300
        f.truncate(300)
    metrics = (trimmed / "metrics.csv").read_bytes()
    (trimmed / "metrics.csv").write_bytes(metrics[: len(metrics) - 7])  # cut in the middle of the last row
    spec = SweepSpec.from_dict(json.loads((sweep / "sweep.json").read_text()))

    with caplog.at_level(logging.WARNING, logger="resgrad.sweeps.sweep"):
        again = run_sweep(spec, sweep, progress=False)
    assert (again.attrs["ran"], again.attrs["skipped"]) == (2, 0) and (again["status"] == "complete").all()
    assert f"{cut.name} is damaged (grad_norms.parquet has 300 bytes" in caplog.text
    assert f"{trimmed.name} is damaged (metrics.csv has {len(metrics) - 7} bytes" in caplog.text
    for run in (cut, trimmed):
        assert check_run(run) is None
        assert len(pd.read_csv(run / "metrics.csv")) == 4 and len(pd.read_parquet(run / "grad_norms.parquet"))

    whole = snapshot(sweep / "runs")
    assert run_sweep(spec, sweep, progress=False).attrs["ran"] == 0  # whole now: skipped, untouched
    assert snapshot(sweep / "runs") == whole


def test_5_report_names_a_damaged_run_and_reports_the_rest(
    sweep_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    damaged, whole = sorted((sweep / "runs").iterdir())
    with open(damaged / "grad_norms.parquet", "r+b") as f:
        f.truncate(300)
    with caplog.at_level(logging.WARNING, logger="resgrad.report.sweepdata"):
        code, err = run_cli(["report", str(sweep), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    assert f"run {damaged.name} is damaged (grad_norms.parquet has 300 bytes" in caplog.text
    runs = pd.read_csv(tmp_path / "rep" / "tables" / "runs.csv").set_index("run_id")
    assert runs.loc[damaged.name, "status"] == "failed"
    assert runs.loc[damaged.name, "error"].startswith("run folder damaged: grad_norms.parquet has 300 bytes")
    assert runs.loc[whole.name, "status"] == "complete"
    table = pd.read_csv(tmp_path / "rep" / "tables" / "by_arch_depth.csv").set_index("depth")
    depth = {run: json.loads((run / "config.json").read_text())["depth"] for run in (damaged, whole)}
    assert table.loc[depth[damaged], ["n_complete", "n_failed"]].tolist() == [0, 1]  # counted like a failed run
    assert table.loc[depth[whole], ["n_complete", "n_failed"]].tolist() == [1, 0]


def test_5_folders_saved_before_the_record_are_checked_by_their_contents(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    run = sorted((sweep / "runs").iterdir())[0]
    summary = json.loads((run / "summary.json").read_text())
    del summary["files"]  # as resgrad wrote summary.json before it kept a record
    (run / "summary.json").write_text(json.dumps(summary))
    assert check_run(run) is None
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1])  # a whole row missing
    assert check_run(run) == "metrics.csv holds 3 whole rows for 4 steps"
    (run / "metrics.csv").write_text(text)
    (run / "grad_norms.parquet").write_bytes((run / "grad_norms.parquet").read_bytes()[:300])
    assert check_run(run) is not None


def test_5_the_committed_results_count_as_whole_and_their_reports_load() -> None:
    sweeps = sorted(p.parent for p in (ROOT / "results").glob("*/sweep.json"))
    assert sweeps, "no committed sweep under results/"
    for sweep in sweeps:
        for run in sorted((sweep / "runs").iterdir()):
            assert check_run(run) is None, run
        runs = load_sweep(sweep).runs
        assert runs["status"].isin(["complete", "diverged"]).all(), sweep  # trained: none damaged, failed or missing


# ---------------------------------------------------------------- 6. output-path problems ended in a traceback


def _commands(data_dir: Path, sweep_dir: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", *tiny_run(data_dir), "--out", str(out)],
        "sweep": ["sweep", *tiny_grid(data_dir), "--out", str(out)],
        "report": ["report", str(sweep_dir), "--out", str(out)],
        "bench": ["bench", *TINY_BENCH, "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["train", "sweep", "report", "bench"])
def test_6_a_path_under_a_file_is_refused_up_front(
    command: str, tmp_path: Path, data_dir: Path, sweep_dir: Path
) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    code, err = run_cli(_commands(data_dir, sweep_dir, out)[command])
    assert code == 2
    assert one_sentence(err, command).endswith(
        f"{tmp_path / 'afile'} is a file, so {out} cannot be made inside it; give --out a path in a folder."
    )
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("command", ["train", "sweep", "report", "bench"])
def test_6_a_read_only_folder_is_refused_up_front(
    command: str, read_only: Path, data_dir: Path, sweep_dir: Path
) -> None:
    code, err = run_cli(_commands(data_dir, sweep_dir, read_only / "out")[command])
    assert code == 2
    line = one_sentence(err, command)
    assert f"cannot write in {read_only} (" in line and "give --out a folder you can write to" in line
    assert not os.listdir(read_only)


@pytest.mark.parametrize("command", ["train", "report", "bench"])
def test_6_out_dot_never_replaces_or_fills_the_current_folder(
    command: str, tmp_path: Path, data_dir: Path, sweep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    code, err = run_cli(_commands(data_dir, sweep_dir, Path("."))[command])
    assert code == 2
    line = one_sentence(err, command)
    assert (
        ("is the current folder or holds it" in line)
        if command != "bench"
        else ("holds files resgrad did not write (notes.txt)" in line)
    )
    assert sorted(os.listdir(here)) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["work"]


def test_6_a_sweep_in_an_empty_current_folder_works(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["sweep", *tiny_grid(data_dir), "--out", "."])[0] == 0
    assert {"sweep.json", "summary.csv", "runs"} <= set(os.listdir(tmp_path))


def test_6_a_full_disk_in_train_is_one_sentence_and_keeps_the_earlier_run(small_disk: Path, data_dir: Path) -> None:
    run = small_disk / "run"
    assert run_cli(["train", *tiny_run(data_dir), "--out", str(run)])[0] == 0
    before = snapshot(run)
    fill(small_disk)
    code, err = run_cli(["train", *tiny_run(data_dir), "--seed", "1", "--out", str(run), "--force"])
    assert code == 1
    line = one_sentence(err, "train")
    assert line.startswith(f"resgrad train: error: could not write {run}/") and "No space left on device" in line
    assert snapshot(run) == before and not leftovers(small_disk)
    assert sorted(os.listdir(small_disk)) == ["filler", "run"]


@pytest.mark.slow
def test_6_a_full_disk_in_sweep_report_and_bench_is_one_sentence(
    small_disk: Path, data_dir: Path, sweep_dir: Path
) -> None:
    report = small_disk / "report"
    assert run_cli(["report", str(sweep_dir), "--out", str(report)])[0] == 0
    earlier = snapshot(report)
    fill(small_disk)
    for command in ("sweep", "report", "bench"):  # train: above
        argv = _commands(data_dir, sweep_dir, report if command == "report" else small_disk / command)[command]
        code, err = run_cli(argv)
        assert code == 1, (command, err)
        line = one_sentence(err, command)
        assert "could not write" in line and "No space left on device (ENOSPC)." in line, line
    assert snapshot(report) == earlier and not leftovers(small_disk)


def test_6_a_swap_that_fails_between_its_two_renames_puts_the_earlier_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import resgrad.files
    from resgrad.errors import OutputError
    from resgrad.files import atomic_dir

    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "report.md").write_text("earlier\n")
    renames = []

    def replace(src: str, dst: str) -> None:
        renames.append((Path(src).name, Path(dst).name))
        if len(renames) == 2:  # the new folder moving in: as if permission were lost just then
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        os.rename(src, dst)

    monkeypatch.setattr(resgrad.files.os, "replace", replace)
    with pytest.raises(OutputError, match=f"could not write {folder}: Permission denied \\(EACCES\\)"):
        with atomic_dir(folder) as tmp:
            (tmp / "report.md").write_text("new\n")
    monkeypatch.undo()
    assert renames[0][1].startswith(".resgrad-old-") and renames[1][1] == "report"
    assert (folder / "report.md").read_text() == "earlier\n" and sorted(os.listdir(tmp_path)) == ["report"]


@pytest.mark.slow
def test_6_a_write_past_the_file_size_limit_is_one_sentence_and_debug_shows_the_traceback(
    tmp_path: Path, data_dir: Path
) -> None:
    argv = ["train", *tiny_run(data_dir), "--out", str(tmp_path / "run")]
    proc = run_child(argv, file_size_limit=2000)  # grad_norms.parquet and model.pt are larger
    assert proc.returncode == 1, proc.stderr
    line = one_sentence(proc.stderr, "train")
    assert line.startswith(f"resgrad train: error: could not write {tmp_path / 'run'}/") and "File too large" in line
    assert not (tmp_path / "run").exists() and not leftovers(tmp_path)
    debug = run_child(argv, file_size_limit=2000, env={"RESGRAD_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "OutputError" in debug.stderr


# ---------------------------------------------------------------- 7. non-finite numbers were accepted


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "nan"], "lr must be a finite number, got nan."),
        (["--lr", "inf"], "lr must be a finite number, got inf."),
        (["--momentum", "nan"], "momentum must be a finite number, got nan."),
        (["--weight-decay", "inf"], "weight-decay must be a finite number, got inf."),
        (["--momentum=-inf"], "momentum must be a finite number, got -inf."),
    ],
)
def test_7_non_finite_train_options_exit_2(flags: list[str], message: str, tmp_path: Path, data_dir: Path) -> None:
    code, err = run_cli(["train", *tiny_run(data_dir), *flags, "--out", str(tmp_path / "run")])
    assert code == 2 and one_sentence(err, "train").endswith(message)
    assert not (tmp_path / "run").exists()


def test_7_non_finite_sweep_and_bench_options_exit_2(tmp_path: Path, data_dir: Path) -> None:
    code, err = run_cli(["sweep", *tiny_grid(data_dir), "--lrs", "0.1", "nan", "--out", str(tmp_path / "s")])
    assert code == 2 and one_sentence(err, "sweep").endswith("lr must be a finite number, got nan.")
    (tmp_path / "s.toml").write_text("momentum = inf\n")
    code, err = run_cli(
        ["sweep", *tiny_grid(data_dir), "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")]
    )
    assert code == 2 and one_sentence(err, "sweep").endswith("momentum must be a finite number, got inf.")
    code, err = run_cli(["bench", *TINY_BENCH, "--min-run-time", "inf", "--out", str(tmp_path / "b")])
    assert code == 2 and one_sentence(err, "bench").endswith(
        "min-run-time must be a finite number of seconds, got inf."
    )
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]


def test_7_json_files_are_strict_json(sweep_dir: Path, tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"loss": math.nan, "ratio": [math.inf, -math.inf, 1.5], "n": 3})
    assert (tmp_path / "x.json").read_text() == (
        '{\n  "loss": null,\n  "ratio": [\n    null,\n    null,\n    1.5\n  ],\n  "n": 3\n}\n'
    )
    for path in sorted(sweep_dir.rglob("*.json")):
        strict_json(path)


# ---------------------------------------------------------------- 8. damaged MNIST


def _mnist_copy(data_dir: Path, tmp_path: Path, gz_only: bool = True) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (data_dir / "MNIST" / "raw").iterdir():
        if path.suffix == ".gz" or not gz_only:
            shutil.copy(path, raw / path.name)
    return raw


def test_8_a_truncated_gz_is_named_with_its_md5(tmp_path: Path, data_dir: Path) -> None:
    from torchvision.datasets import MNIST

    raw = _mnist_copy(data_dir, tmp_path)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    found, expected = hashlib.md5(gz.read_bytes()).hexdigest(), dict(MNIST.resources)[gz.name]
    code, err = run_cli(["train", *tiny_run(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{gz} has MD5 {found}, expected {expected}; replace it with the official file."
    )
    assert not (tmp_path / "run").exists()


def test_8_a_garbage_idx_file_is_named_as_damaged(tmp_path: Path, data_dir: Path) -> None:
    load = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=1,
        train_subset=64,
        test_subset=50,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    train(load, progress=False)  # torchvision has unpacked the four files beside their .gz
    raw = _mnist_copy(data_dir, tmp_path, gz_only=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(os.urandom(1000))
    code, err = run_cli(["train", *tiny_run(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{raw / 'train-labels-idx1-ubyte'} is damaged (its header is not that of MNIST's file); "
        "delete it to have it unpacked again from its .gz."
    )


def test_8_the_sweep_preflight_names_a_damaged_training_file_once(tmp_path: Path, data_dir: Path) -> None:
    raw = _mnist_copy(data_dir, tmp_path)
    gz = raw / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "sweep"
    code, err = run_cli(["sweep", *tiny_grid(tmp_path / "data"), "--seeds", "0", "1", "--out", str(out)])
    assert code == 2 and f"{gz} has MD5 " in one_sentence(err, "sweep")
    assert not out.exists()  # no run started, nothing written


# ---------------------------------------------------------------- 9. more tracebacks


@pytest.mark.parametrize("seed", ["1180591620717411303424", "-1", str(2**63)])
def test_9_a_seed_outside_0_to_2_63_is_refused_in_train_and_sweep(seed: str, tmp_path: Path, data_dir: Path) -> None:
    code, err = run_cli(["train", *tiny_run(data_dir), "--seed", seed, "--out", str(tmp_path / "r")])
    assert code == 2 and one_sentence(err, "train").endswith(
        f"seed must be a whole number from 0 to 2**63-1, got {seed}."
    )
    code, err = run_cli(["sweep", *tiny_grid(data_dir), "--seeds", seed, "--out", str(tmp_path / "s")])
    assert code == 2 and "seed must be a whole number from 0 to 2**63-1" in one_sentence(err, "sweep")
    assert not os.listdir(tmp_path)


def test_9_the_largest_seed_trains(data_dir: Path) -> None:
    config = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=1,
        train_subset=64,
        test_subset=50,
        threads=1,
        device="cpu",
        seed=2**63 - 1,
        data_dir=str(data_dir),
    )
    assert train(config, progress=False).status == "complete"


def test_9_a_huge_step_count_allocates_nothing_up_front(tmp_path: Path, data_dir: Path) -> None:
    # 10**14 steps of float32 losses would be 400 TB; a learning rate of 1e6 ends the run within steps.
    out = tmp_path / "run"
    code, err = run_cli(
        [
            "train",
            *tiny_run(data_dir),
            "--steps",
            "99999999999999",
            "--lr",
            "1e6",
            "--momentum",
            "0.9",
            "--width",
            "4",
            "--out",
            str(out),
        ]
    )  # width 2 can die quietly instead
    assert code == 0, err
    summary = strict_json(out / "summary.json")
    assert summary["status"] == "diverged" and summary["steps"] < 50
    assert len(pd.read_csv(out / "metrics.csv")) == summary["steps"]


def test_9_step_buffer_holds_what_a_list_holds() -> None:
    import torch

    values = [float(i) * 0.5 for i in range(2 * StepBuffer.CHUNK + 7)]
    buf = StepBuffer("cpu", torch.float32)
    for step, value in enumerate(values):
        buf[step] = torch.tensor(value)
    for start, stop in (
        (0, len(values)),
        (3, 5),
        (StepBuffer.CHUNK - 2, StepBuffer.CHUNK + 3),
        (5, 5),
        (2 * StepBuffer.CHUNK, len(values)),
    ):
        assert buf[start:stop].tolist() == values[start:stop]
    assert len(buf.chunks) == 3  # memory for the steps seen, a chunk at a time


def test_9_a_run_across_many_chunks_records_what_a_run_in_one_chunk_records(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=10,
        eval_every=4,
        train_subset=128,
        test_subset=50,
        batch_size=16,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    one = train(config, progress=False)
    monkeypatch.setattr(StepBuffer, "CHUNK", 3)  # steps 0-2, 3-5, 6-8, 9: every boundary crossed
    many = train(config, progress=False)
    pd.testing.assert_frame_equal(many.metrics, one.metrics)
    assert many.metrics["epoch"].tolist() == [0] * 8 + [1] * 2  # 128 images in batches of 16: 8 steps an epoch


def test_9_a_toml_file_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    text = "depths = [8]  # caf\u00e9\n"  # café, in Latin-1: the é is byte 0xE9, not UTF-8
    (tmp_path / "s.toml").write_bytes(text.encode("latin-1"))
    code, err = run_cli(["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert one_sentence(err, "sweep").endswith(
        f"sweep config {tmp_path / 's.toml'} is not UTF-8 text (byte "
        f"{text.index('é')} cannot be decoded); save it as UTF-8."
    )
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- 10. sweep bookkeeping


def test_10_a_narrower_grid_keeps_the_earlier_runs_in_sweep_json_summary_and_report(
    sweep_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    both = pd.read_csv(sweep / "summary.csv")
    narrow = SweepSpec(
        grid={"arch": ["residual"], "depth": [8], "width": [2]},
        fixed=json.loads((sweep / "sweep.json").read_text())["fixed"],
    )
    result = run_sweep(narrow, sweep, progress=False)
    assert (result.attrs["ran"], result.attrs["skipped"], result.attrs["earlier"]) == (0, 1, 1)
    saved = json.loads((sweep / "sweep.json").read_text())
    assert saved["grid"]["depth"] == [8] and [e["grid"]["depth"] for e in saved["earlier"]] == [[8, 14]]
    assert sorted(pd.read_csv(sweep / "summary.csv").run_id) == sorted(both.run_id)
    assert sorted(load_sweep(sweep).runs.run_id) == sorted(both.run_id)

    # A third grid: the first grid's extra point stays listed through it.
    other = SweepSpec(
        grid={"arch": ["residual"], "depth": [8], "width": [2], "seed": [0]}, fixed={**narrow.fixed, "steps": 2}
    )
    run_sweep(other, sweep, progress=False)
    assert set(both.run_id) < set(pd.read_csv(sweep / "summary.csv").run_id)
    assert set(both.run_id) < set(load_sweep(sweep).runs.run_id)


def test_10_clean_up_touches_only_resgrads_temp_names(sweep_dir: Path, tmp_path: Path) -> None:
    sweep = copy_sweep(sweep_dir, tmp_path)
    mine = [sweep / ".notes.tmp", sweep / "runs" / ".draft.tmp", sweep / ".old-stuff.old-12"]
    for path in mine:
        path.write_text("mine")
    (sweep / "runs" / ".my-folder.tmp").mkdir()
    (sweep / "runs" / ".my-folder.tmp" / "keep.txt").write_text("mine")
    ours = [sweep / ".resgrad-tmp-summary.csv-abc123", sweep / "runs" / ".resgrad-tmp-run-xyz"]
    ours[0].write_text("half")
    ours[1].mkdir()
    spec = SweepSpec.from_dict(json.loads((sweep / "sweep.json").read_text()))
    run_sweep(spec, sweep, progress=False)
    assert all(p.read_text() == "mine" for p in mine)
    assert (sweep / "runs" / ".my-folder.tmp" / "keep.txt").read_text() == "mine"
    assert not any(p.exists() for p in ours)
