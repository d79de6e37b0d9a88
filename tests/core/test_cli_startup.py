"""The command line builds only the parser of the command it runs, and its help as before."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from resgrad.cli import COMMANDS, command_named, make_parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_commands_own_parser_is_the_full_parsers_with_the_same_help(command: str) -> None:
    alone, full = _commands(make_parser(command))[command], _commands(make_parser())[command]
    assert [a.option_strings for a in alone._actions] == [a.option_strings for a in full._actions]
    assert alone.format_help() == full.format_help()
    assert "examples:" in alone.format_help()  # the epilog, built when the help is shown


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--depth", "8"], "train"),
        (["--debug", "sweep", "--depths", "8"], "sweep"),
        (["report", "train"], "report"),
        (["--help", "train"], None),  # the top-level help lists every command
        (["--version"], None),
        (["trian"], None),  # the typo's message lists every command
        ([], None),
    ],
)
def test_the_command_named_is_the_first_word_after_the_top_level_flags(argv: list[str], named: str | None) -> None:
    assert command_named(argv) == named


def test_a_typo_still_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        make_parser(command_named(["trian"])).parse_args(["trian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in COMMANDS), err


@pytest.mark.parametrize("argv", [["train", "--depth", "8"], ["sweep", "--depths", "8"], ["bench"]])
def test_parsing_a_run_command_imports_no_plotting_module(argv: list[str]) -> None:
    # The lesion, shatter and landscape flags import their figure modules: 0.4 s of seaborn and matplotlib.
    code = (
        "import sys; from resgrad.cli import command_named, make_parser; "
        f"make_parser(command_named({argv!r})).parse_args({argv!r}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'seaborn', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_console_script_exits_with_the_commands_code() -> None:
    bad = subprocess.run([sys.executable, "-m", "resgrad", "train", "--depth", "9"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.startswith("resgrad train: error: depth 9"), bad.stderr
    ok = subprocess.run([sys.executable, "-m", "resgrad", "--version"], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.split()[0]) == (0, "resgrad")
