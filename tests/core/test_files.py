"""The file rules every command follows: an output folder is new, empty or recognisably resgrad's; files are
written whole (atomically) as strict JSON; a bad --out, a read-only folder or a full disk is one sentence.

Full disks are real: a small tmpfs (root only, skipped where mount is not permitted) or a file-size limit
(RLIMIT_FSIZE) on a child process. A read-only folder is a read-only tmpfs for root (who can write into a
chmod-ed folder) and a chmod-ed folder otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_BENCH, leftovers, one_sentence, run_child, run_cli, snapshot, strict_json, tiny_grid, tiny_run

import resgrad.files
from resgrad.errors import OutputError, UsageError
from resgrad.files import atomic_dir, prepare_output, write_json


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


def _commands(data_dir: Path, sweep_dir: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", *tiny_run(data_dir), "--out", str(out)],
        "sweep": ["sweep", *tiny_grid(data_dir), "--out", str(out)],
        "report": ["report", str(sweep_dir), "--out", str(out)],
        "bench": ["bench", *TINY_BENCH, "--out", str(out)],
    }


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


# ---------------------------------------------------------------- --out: refused up front, in one sentence


@pytest.mark.parametrize("command", ["train", "sweep", "report", "bench"])
def test_a_path_under_a_file_is_refused_up_front(
    command: str, tmp_path: Path, data_dir: Path, tiny_sweep: Path
) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    code, err = run_cli(_commands(data_dir, tiny_sweep, out)[command])
    assert code == 2
    assert one_sentence(err, command).endswith(
        f"{tmp_path / 'afile'} is a file, so {out} cannot be made inside it; give --out a path in a folder."
    )
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("command", ["train", "sweep", "report", "bench"])
def test_a_read_only_folder_is_refused_up_front(
    command: str, read_only: Path, data_dir: Path, tiny_sweep: Path
) -> None:
    code, err = run_cli(_commands(data_dir, tiny_sweep, read_only / "out")[command])
    assert code == 2
    line = one_sentence(err, command)
    assert f"cannot write in {read_only} (" in line and "give --out a folder you can write to" in line
    assert not os.listdir(read_only)


@pytest.mark.parametrize("command", ["train", "report", "bench"])
def test_out_dot_never_replaces_or_fills_the_current_folder(
    command: str, tmp_path: Path, data_dir: Path, tiny_sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "work"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    code, err = run_cli(_commands(data_dir, tiny_sweep, Path("."))[command])
    assert code == 2
    line = one_sentence(err, command)
    assert (
        ("is the current folder or holds it" in line)
        if command != "bench"
        else ("holds files resgrad did not write (notes.txt)" in line)
    )
    assert sorted(os.listdir(here)) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["work"]


def test_a_sweep_in_an_empty_current_folder_works(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["sweep", *tiny_grid(data_dir), "--out", "."])[0] == 0
    assert {"sweep.json", "summary.csv", "runs"} <= set(os.listdir(tmp_path))


# ---------------------------------------------------------------- full disks and failed writes


def test_a_full_disk_in_train_is_one_sentence_and_keeps_the_earlier_run(small_disk: Path, data_dir: Path) -> None:
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
@pytest.mark.usefixtures("small_peak_matmul")
def test_a_full_disk_in_sweep_report_and_bench_is_one_sentence(
    small_disk: Path, data_dir: Path, tiny_sweep: Path
) -> None:
    report = small_disk / "report"
    assert run_cli(["report", str(tiny_sweep), "--out", str(report)])[0] == 0
    earlier = snapshot(report)
    fill(small_disk)
    for command in ("sweep", "report", "bench"):  # train: above
        argv = _commands(data_dir, tiny_sweep, report if command == "report" else small_disk / command)[command]
        code, err = run_cli(argv)
        assert code == 1, (command, err)
        line = one_sentence(err, command)
        assert "could not write" in line and "No space left on device (ENOSPC)." in line, line
    assert snapshot(report) == earlier and not leftovers(small_disk)


def test_a_swap_that_fails_between_its_two_renames_puts_the_earlier_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
def test_a_write_past_the_file_size_limit_is_one_sentence_and_debug_shows_the_traceback(
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


# ---------------------------------------------------------------- JSON


def test_json_files_are_strict_json(tiny_sweep: Path, tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"loss": math.nan, "ratio": [math.inf, -math.inf, 1.5], "n": 3})
    assert (tmp_path / "x.json").read_text() == (
        '{\n  "loss": null,\n  "ratio": [\n    null,\n    null,\n    1.5\n  ],\n  "n": 3\n}\n'
    )
    for path in sorted(tiny_sweep.rglob("*.json")):
        strict_json(path)
