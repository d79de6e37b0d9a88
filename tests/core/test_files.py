"""The file rules every command follows: resgrad never deletes a file it did not write.

An output folder is new, empty or recognisably resgrad's, checked at any depth before the work
(``prepare_output``) and again at the moment a folder is swapped in (``atomic_dir``), for every kind of
folder resgrad replaces whole, a new experiment's kind too; files are written whole (atomically) as strict
JSON; what a killed run left is cleaned up by the next run into the same place (resgrad's own names only,
of processes now gone); a bad output path, a read-only folder or a full disk is one sentence.

Full disks are real: a small tmpfs (root only, skipped where mount is not permitted) or a file-size limit
(RLIMIT_FSIZE) on a child process. A read-only folder is a read-only tmpfs for root (who can write into a
chmod-ed folder) and a chmod-ed folder otherwise. Killed runs are real processes, killed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    TINY_BENCH,
    dead_pid,
    fill,
    leftovers,
    one_sentence,
    run_child,
    run_cli,
    snapshot,
    strict_json,
    tiny_grid,
    tiny_run,
    tmpfs,
)

import resgrad.files
from resgrad.errors import OutputError, UsageError
from resgrad.files import atomic_dir, clean_leftovers, prepare_output, write_json
from resgrad.ownership import TMP_PREFIX, foreign


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB filesystem of its own (tmpfs), unmounted after the test."""
    with tmpfs(tmp_path / "disk") as disk:
        yield disk


@pytest.fixture
def report_disk(tmp_path: Path):
    """An 8 MiB filesystem of its own: room for a whole report of the tiny sweep (about 1.3 MB) before it is filled."""
    with tmpfs(tmp_path / "disk", "size=8m") as disk:
        yield disk


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder nobody here can write in: a read-only tmpfs for root, else a folder without write permission."""
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        with tmpfs(folder, "ro,size=64k"):
            yield folder
    else:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


# Every command that writes, with flags for a second or two of work.
COMMANDS = ["train", "sweep", "report", "lesion", "shatter", "landscape", "bench", "export"]


TINY_LANDSCAPE = ["--grid", "3", "--images", "8", "--hessian-steps", "2", "--device", "cpu", "--threads", "1"]


def _commands(data_dir: Path, sweep_dir: Path, out: Path) -> dict[str, list[str]]:
    data = ["--data-dir", str(data_dir)]
    return {
        "train": ["train", *tiny_run(data_dir), "--out", str(out)],
        "sweep": ["sweep", *tiny_grid(data_dir), "--out", str(out)],
        "report": ["report", str(sweep_dir), "--out", str(out)],
        "lesion": ["lesion", str(sweep_dir), *data, "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out)],
        "shatter": ["shatter", "--sweep", str(sweep_dir), *data, "--images", "2", "--quiet", "--out", str(out)],
        "landscape": ["landscape", str(sweep_dir), *data, *TINY_LANDSCAPE, "--quiet", "--out", str(out)],
        "bench": ["bench", *TINY_BENCH, "--out", str(out)],
        "export": ["export", str(sweep_dir), "--tensorboard", str(out)],
    }


def test_every_writing_command_is_tested_here() -> None:
    from resgrad.cli import COMMANDS as ALL

    assert set(ALL) == set(COMMANDS)


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
        # a report made before the manifest: the figures and tables its report.md names are its own
        (
            "report",
            ["report.md=![a](figures/a.png) `tables/t.csv`", "report.html", "figures/a.png", "tables/t.csv"],
            False,
            True,
        ),
        ("report", ["report.md", "report.html", "figures/a.png"], False, False),  # a figure report.md does not name
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
        name, _, text = name.partition("=")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps({"kind": marker}) if marker else text or "x")
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
    report_disk: Path, data_dir: Path, tiny_sweep: Path
) -> None:
    small_disk = report_disk
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
        with atomic_dir(folder, "report") as tmp:
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


# Every kind of folder resgrad replaces whole; "landscape" stands for a new experiment, which no rule names.
REPLACED = ["run", "report", "lesion", "shatter", "tensorboard", "landscape"]


def earlier(path: Path, kind: str) -> Path:
    """A ``kind`` folder as resgrad writes it: two files, one of them in a subfolder."""
    with atomic_dir(path, kind) as tmp:
        (tmp / "a.csv").write_text("earlier\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.png").write_bytes(b"earlier")
    return path


def run_killed(code: str) -> int:
    """Run ``code`` in a child Python that SIGKILLs itself where ``code`` calls ``die()``; return its pid."""
    prelude = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    child = subprocess.Popen([sys.executable, "-c", prelude + code], stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    return child.pid


# ---------------------------------------------------------------- before the work: at any depth


@pytest.mark.parametrize("kind", REPLACED)
@pytest.mark.parametrize(
    ("added", "named"),  # a folder resgrad did not make is named once, not file by file
    [
        ("notes.txt", "notes.txt"),
        (".hidden", ".hidden"),
        ("sub/notes.txt", "sub/notes.txt"),
        ("sub/deeper/notes.txt", "sub/deeper/"),
        ("mine/x.png", "mine/"),
    ],
)
def test_a_file_resgrad_did_not_write_at_any_depth_refuses_the_folder(
    tmp_path: Path, kind: str, added: str, named: str
) -> None:
    out = earlier(tmp_path / "out", kind)
    assert prepare_output(out, kind, force=True) == out  # only resgrad's files: may be replaced
    (out / added).parent.mkdir(parents=True, exist_ok=True)
    (out / added).write_text("mine")
    before = snapshot(out)
    with pytest.raises(UsageError, match=f"holds files resgrad did not write \\({named}\\)"):
        prepare_output(out, kind, force=True)
    assert snapshot(out) == before


def test_a_link_in_a_folder_counts_as_someone_elses(tmp_path: Path) -> None:
    out = earlier(tmp_path / "out", "report")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    (out / "sub" / "b.png").unlink()
    (out / "sub" / "b.png").symlink_to(tmp_path / "mine" / "thesis.tex")  # a resgrad name, now a link
    assert foreign(out, "report") == ["sub/b.png"]


def test_a_report_made_before_the_manifest_owns_only_the_figures_and_tables_its_report_md_names(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    (out / "tables").mkdir()
    (out / "report.md").write_text("![a](figures/train_loss.png)\n\nCSV: `tables/headline.csv`\n")
    (out / "report.html").write_text("<p>report</p>")
    (out / "figures" / "train_loss.png").write_bytes(b"png")
    (out / "tables" / "headline.csv").write_text("a\n1\n")
    assert foreign(out, "report") == [] and prepare_output(out, "report") == out
    (out / "figures" / "my_annotated_plot.png").write_bytes(b"mine")
    (out / "tables" / "my_table.csv").write_text("mine")
    assert foreign(out, "report") == ["figures/my_annotated_plot.png", "tables/my_table.csv"]
    with pytest.raises(UsageError, match="figures/my_annotated_plot.png, tables/my_table.csv"):
        prepare_output(out, "report")


def test_a_run_made_before_the_manifest_owns_the_files_its_summary_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "metrics.csv", "grad_norms.parquet"):
        (out / name).write_text("x")
    (out / "summary.json").write_text('{"status": "complete", "files": {"extra.bin": {}}}')
    (out / "extra.bin").write_text("recorded")
    assert foreign(out, "run") == []
    (out / "notes" / "n.txt").parent.mkdir()
    (out / "notes" / "n.txt").write_text("mine")
    assert foreign(out, "run") == ["notes/"]


# ---------------------------------------------------------------- at the swap


@pytest.mark.parametrize("kind", REPLACED)
def test_a_file_added_while_resgrad_works_is_kept_in_the_new_folder(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = earlier(tmp_path / "out", kind)
    with atomic_dir(out, kind) as tmp:
        (tmp / "a.csv").write_text("new\n")
        (tmp / "c.csv").write_text("new\n")
        # Saved by the user while the work runs, after the check before it: at the top, deep, in a new folder.
        (out / "mine.txt").write_text("mine 1")
        (out / "sub" / "mine.png").write_bytes(b"mine 2")
        (out / "fresh" / "deep").mkdir(parents=True)
        (out / "fresh" / "deep" / "notes.md").write_text("mine 3")
    assert (out / "a.csv").read_text() == (out / "c.csv").read_text() == "new\n"
    assert not (out / "sub" / "b.png").exists()  # the earlier folder's own file went with it
    assert (out / "mine.txt").read_text() == "mine 1" and (out / "sub" / "mine.png").read_bytes() == b"mine 2"
    assert (out / "fresh" / "deep" / "notes.md").read_text() == "mine 3"
    assert "kept fresh/, mine.txt, sub/mine.png" in caplog.text
    assert leftovers(tmp_path) == []
    with pytest.raises(UsageError, match="did not write"):  # and the next run refuses the folder
        prepare_output(out, kind, force=True)


@pytest.mark.parametrize("kind", REPLACED)
def test_a_file_added_while_resgrad_works_under_a_name_the_new_folder_takes_stops_the_swap(
    tmp_path: Path, kind: str
) -> None:
    out = earlier(tmp_path / "out", kind)
    with pytest.raises(UsageError, match=r"out/c.csv was added while resgrad worked.*nothing was replaced"):
        with atomic_dir(out, kind) as tmp:
            (tmp / "c.csv").write_text("new\n")
            (out / "c.csv").write_text("mine")
            before = snapshot(out)
    assert snapshot(out) == before and (out / "c.csv").read_text() == "mine"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- what a killed run left


def test_the_temp_folder_of_a_killed_run_goes_with_the_next_run_into_the_same_place(tmp_path: Path) -> None:
    out = tmp_path / "report"
    dead = run_killed(
        "from resgrad.files import atomic_dir\n"
        f"with atomic_dir({str(out)!r}, 'report') as tmp:\n"
        "    (tmp / 'report.md').write_text('half')\n"
        "    die()\n"
    )
    (half,) = tmp_path.glob(f"{TMP_PREFIX}{dead}-report-*")
    assert (half / "report.md").read_text() == "half"
    # Not resgrad's or not of this place: a user's look-alike, another output's leftover.
    mine = tmp_path / f"{TMP_PREFIX}notes"
    mine.write_text("mine")
    other = tmp_path / f"{TMP_PREFIX}{dead}-lesion-abcd1234"
    other.mkdir()
    earlier(out, "report")
    assert not half.exists() and mine.read_text() == "mine" and other.is_dir()


def test_a_running_process_keeps_its_temp_folder(tmp_path: Path) -> None:
    out = tmp_path / "report"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom resgrad.files import atomic_dir\n"
            f"with atomic_dir({str(out)!r}, 'report') as tmp:\n"
            "    (tmp / 'ready').write_text('')\n"
            "    time.sleep(120)\n",
        ]
    )
    try:
        for _ in range(600):
            busy = list(tmp_path.glob(f"{TMP_PREFIX}{child.pid}-report-*"))
            if busy and (busy[0] / "ready").exists():
                break
            time.sleep(0.1)
        earlier(out, "report")  # another run into the same place, while the child still writes
        assert busy[0].is_dir() and (busy[0] / "ready").exists()
    finally:
        child.kill()
        child.wait()
    clean_leftovers(tmp_path, "report")  # now its process is gone
    assert not busy[0].exists()


def test_a_folder_set_aside_by_a_run_killed_between_its_two_renames_goes_back(tmp_path: Path) -> None:
    out = earlier(tmp_path / "out", "lesion")
    files = snapshot(out)
    dead = run_killed(
        f"os.replace({str(out)!r}, {str(tmp_path / '.resgrad-old-')!r} + str(os.getpid()) + '-out')\ndie()\n"
    )
    assert not out.exists() and (tmp_path / f".resgrad-old-{dead}-out").is_dir()
    clean_leftovers(tmp_path)
    assert snapshot(out) == files and leftovers(tmp_path) == []


def test_a_folder_set_aside_by_a_run_killed_after_the_swap_keeps_what_is_not_resgrads(tmp_path: Path) -> None:
    aside = earlier(tmp_path / "aside", "shatter")
    (aside / "sub" / "mine.txt").write_text("mine")
    out = earlier(tmp_path / "out", "shatter")  # the new folder, already in place
    gone = tmp_path / f".resgrad-old-{dead_pid()}-out"
    os.replace(aside, gone)
    clean_leftovers(tmp_path)
    assert not gone.exists() and (out / "sub" / "mine.txt").read_text() == "mine"
    assert (out / "sub" / "b.png").read_bytes() == b"earlier"  # the new folder's own file stays


@pytest.mark.slow
def test_train_into_the_place_of_a_killed_train_cleans_up_after_it(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    run_killed(
        "from resgrad.files import atomic_dir\n"
        f"with atomic_dir({str(out)!r}, 'run') as tmp:\n"
        "    (tmp / 'config.json').write_text('{}')\n"
        "    die()\n"
    )
    assert len(leftovers(tmp_path)) == 1
    code, err = run_cli(["train", *tiny_run(data_dir), "--out", str(out)])
    assert code == 0, err
    assert leftovers(tmp_path) == [] and (out / "summary.json").is_file()


# ---------------------------------------------------------------- bad output paths: one sentence, exit 2


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("loop", "is a symbolic link loop"),
        ("in-loop", "is a symbolic link loop"),
        ("long", "is too long"),
        ("under-file", "is a file, so"),
    ],
)
def test_a_bad_output_path_is_one_sentence_and_exit_2_for_every_writing_command(
    tmp_path: Path, tiny_sweep: Path, data_dir: Path, command: str, case: str, message: str
) -> None:
    place = tmp_path / "place"
    place.mkdir()
    loop = place / "loop"
    loop.symlink_to(loop)  # a link to itself
    (place / "a-file").write_text("mine")
    out = {"loop": loop, "in-loop": loop / "out", "long": place / ("x" * 300), "under-file": place / "a-file" / "out"}
    before = sorted(os.listdir(place))
    code, err = run_cli(_commands(data_dir, tiny_sweep, out[case])[command])
    assert code == 2 and message in one_sentence(err, command)
    assert sorted(os.listdir(place)) == before and (place / "a-file").read_text() == "mine"


@pytest.mark.parametrize("command", ["train", "report", "lesion", "shatter", "landscape"])
def test_a_name_that_leaves_no_room_for_the_temp_name_beside_it_is_refused(
    tmp_path: Path, tiny_sweep: Path, data_dir: Path, command: str
) -> None:
    out = tmp_path / ("x" * 250)  # a legal name, but .resgrad-tmp-<pid>-<name>-<random> beside it is not
    code, err = run_cli(_commands(data_dir, tiny_sweep, out)[command])
    assert code == 2 and "is too long (250 bytes; at most" in one_sentence(err, command)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_link_put_where_resgrad_made_a_folder_is_never_followed_when_the_old_folder_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "b.png").write_bytes(b"mine")  # the name of a file resgrad wrote into its folder sub/
    aside = earlier(tmp_path / "aside", "report")
    shutil.rmtree(aside / "sub")
    (aside / "sub").symlink_to(mine)  # sub, now a link to the user's folder
    out = earlier(tmp_path / "out", "report")  # the folder that replaced it, with a sub/ of its own
    gone = tmp_path / f".resgrad-old-{dead_pid()}-out"
    os.replace(aside, gone)
    clean_leftovers(tmp_path)
    assert (mine / "b.png").read_bytes() == b"mine" and (out / "sub" / "b.png").read_bytes() == b"earlier"
    assert (gone / "sub").is_symlink() and f"{gone} holds files that could not move back" in caplog.text
