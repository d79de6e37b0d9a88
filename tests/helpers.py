"""Plain helpers shared by the test files (fixtures are in the conftest.py files): ``from helpers import ...``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resgrad.cli import main
from resgrad.ownership import MARKER, file_record, manifest

ROOT = Path(__file__).resolve().parents[1]  # the repository


def exit_code(argv: list[str]) -> int:
    """The exit code of `resgrad ARGV` run in this process: argparse errors raise SystemExit, command errors
    (a UsageError and the like) return 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def dead_pid() -> int:
    """The id of a process that ran and is gone (what a killed run leaves in its temp names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of `resgrad ARGV` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = exit_code(argv)
    return code, err.getvalue()


def one_sentence(stderr: str, command: str) -> str:
    """The error line of a command that failed cleanly: one line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"resgrad {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr and "Exception" not in stderr, stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """resgrad's temp and set-aside names left anywhere under ``folder``."""
    return [str(p) for p in folder.rglob(".resgrad-*") if p.name != ".resgrad.json"]


@contextlib.contextmanager
def tmpfs(path: Path, options: str = "size=1m") -> Iterator[Path]:
    """A small filesystem of its own at ``path`` (a tmpfs: root only; the test is skipped where mount is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` with a file of the test's own: to the last byte, or to ``leave`` bytes short of it."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for block in (4096, 1):  # then what the last block left room for
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
        if leave:
            f.truncate(max(0, f.tell() - leave))


def rerecord(run_dir: Path) -> None:
    """Record a run folder's files as they are now, as ``save_run`` records them: whole by its records again.

    For a folder whose content a test changed on purpose (a model.pt that is not a state dict).
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["files"] = file_record(run_dir, sorted(summary["files"]))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / MARKER).write_text(json.dumps(manifest(run_dir, "run")))
