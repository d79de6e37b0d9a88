"""The ``resgrad`` command: argparse lives here and nowhere else.

Each subcommand turns its flags into a typed config at once and calls library code.
Bad input (``UsageError``), and a model or batch too large for memory, print one sentence
and exit with code 2; an OS error (a write that failed: full disk, permission lost) one
sentence and exit code 1. ``--debug`` or
``RESGRAD_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from resgrad import __version__
from resgrad.cli.analysis import add_export, add_landscape, add_lesion, add_report, add_shatter
from resgrad.cli.bench import add_bench
from resgrad.cli.runs import add_sweep, add_train
from resgrad.errors import OutputError, UsageError, out_of_memory

# ---------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resgrad",
        description="Measure why residual connections make deep networks trainable: "
        "train plain/residual twins on MNIST, record per-layer gradient norms, sweep depths, report, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"resgrad {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the Python traceback too (also: RESGRAD_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `resgrad train ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_train,
    add_bench,
    add_sweep,
    add_report,
    add_export,
    add_lesion,
    add_shatter,
    add_landscape,
]


def _describe(exc: OSError) -> str:
    """One sentence for an OS error: the path and the reason (OutputError says it already)."""
    if isinstance(exc, OutputError):
        return str(exc)
    code = errno.errorcode.get(exc.errno or -1)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}{f' ({code})' if code else ''}."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resgrad`` console script; returns the exit code."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RESGRAD_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except UsageError as exc:
        if debug:
            raise
        print(f"resgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed (full disk, permission lost, read-only filesystem), or a read
        if debug:
            raise
        print(f"resgrad {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"resgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a model or batch too large for memory: bad input for this machine
        if debug or (sentence := out_of_memory(exc)) is None:
            raise
        print(f"resgrad {args.command}: error: {sentence}", file=sys.stderr)
        return 2
