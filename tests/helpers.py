"""Plain helpers shared by the test files (fixtures are in the conftest.py files): ``from helpers import ...``."""

from __future__ import annotations

from pathlib import Path

from resgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]  # the repository


def exit_code(argv: list[str]) -> int:
    """The exit code of `resgrad ARGV` run in this process: argparse errors raise SystemExit, command errors
    (a UsageError and the like) return 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)
