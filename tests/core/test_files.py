"""The file rules: resgrad never deletes a file it did not write.

Checked at any depth before the work (``prepare_output``) and again at the moment a folder is
swapped in (``atomic_dir``), for every kind of folder resgrad replaces whole, a new
experiment's kind too; what a killed run left is cleaned up by the next run into the same
place (resgrad's own names only, of processes now gone); a bad output path is one sentence
and exit code 2 for every command that writes. Killed runs are real processes, killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import dead_pid, leftovers, one_sentence, run_cli, snapshot

from resgrad.errors import UsageError
from resgrad.files import atomic_dir, clean_leftovers, prepare_output
from resgrad.ownership import TMP_PREFIX, foreign
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.sweep import run_sweep

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
    code, err = run_cli(["train", *TINY_RUN, "--data-dir", str(data_dir), "--out", str(out)])
    assert code == 0, err
    assert leftovers(tmp_path) == [] and (out / "summary.json").is_file()


# ---------------------------------------------------------------- bad output paths: one sentence, exit 2

TINY_RUN = ["--arch", "residual", "--depth", "8", "--width", "2", "--steps", "2", "--train-subset", "64"]
TINY_RUN += ["--test-subset", "50", "--threads", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished sweep of one tiny run with its weights."""
    out = tmp_path_factory.mktemp("files") / "sweep"
    fixed = dict(steps=2, train_subset=64, test_subset=50, threads=1, device="cpu", data_dir=str(data_dir))
    spec = SweepSpec(grid={"arch": ["residual"], "depth": [8], "width": [2]}, fixed=fixed)
    assert list(run_sweep(spec, out, progress=False)["status"]) == ["complete"]
    return out


def _writing_commands(sweep: Path, data_dir: Path, out: Path) -> dict[str, list[str]]:
    data = ["--data-dir", str(data_dir)]
    grid = ["--archs", "residual", "--depths", "8", "--widths", "2", "--steps", "2", "--train-subset", "64"]
    return {
        "train": ["train", *TINY_RUN, *data, "--out", str(out)],
        "sweep": ["sweep", *grid, "--threads", "1", "--device", "cpu", "--quiet", *data, "--out", str(out)],
        "report": ["report", str(sweep), "--out", str(out)],
        "lesion": ["lesion", str(sweep), *data, "--out", str(out), "--quiet"],
        "shatter": ["shatter", "--sweep", str(sweep), *data, "--images", "2", "--out", str(out), "--quiet"],
        "bench": [
            "bench",
            "--devices",
            "cpu",
            "--depths",
            "8",
            "--widths",
            "2",
            "--batch-sizes",
            "2",
            "--out",
            str(out),
        ],
        "export": ["export", str(sweep), "--tensorboard", str(out)],
    }


COMMANDS = ["train", "sweep", "report", "lesion", "shatter", "bench", "export"]


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
    tmp_path: Path, sweep_dir: Path, data_dir: Path, command: str, case: str, message: str
) -> None:
    place = tmp_path / "place"
    place.mkdir()
    loop = place / "loop"
    loop.symlink_to(loop)  # a link to itself
    (place / "a-file").write_text("mine")
    out = {"loop": loop, "in-loop": loop / "out", "long": place / ("x" * 300), "under-file": place / "a-file" / "out"}
    before = sorted(os.listdir(place))
    code, err = run_cli(_writing_commands(sweep_dir, data_dir, out[case])[command])
    assert code == 2 and message in one_sentence(err, command)
    assert sorted(os.listdir(place)) == before and (place / "a-file").read_text() == "mine"


@pytest.mark.parametrize("command", ["train", "report", "lesion", "shatter"])
def test_a_name_that_leaves_no_room_for_the_temp_name_beside_it_is_refused(
    tmp_path: Path, sweep_dir: Path, data_dir: Path, command: str
) -> None:
    out = tmp_path / ("x" * 250)  # a legal name, but .resgrad-tmp-<pid>-<name>-<random> beside it is not
    code, err = run_cli(_writing_commands(sweep_dir, data_dir, out)[command])
    assert code == 2 and "is too long (250 bytes; at most" in one_sentence(err, command)
    assert sorted(os.listdir(tmp_path)) == []


def test_every_writing_command_is_tested_here() -> None:
    from resgrad.cli import COMMANDS as ALL

    names = {add.__name__.removeprefix("add_") for add in ALL}
    assert names == set(COMMANDS)


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
