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
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from resgrad import __version__
from resgrad.cli.analysis import add_export, add_landscape, add_lesion, add_report, add_shatter
from resgrad.cli.bench import add_bench
from resgrad.cli.runs import add_sweep, add_train
from resgrad.errors import OutputError, UsageError, out_of_memory

# ---------------------------------------------------------------- main


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``resgrad`` parser; with ``command``, the other commands get empty parsers.

    Building a command's flags imports its modules (lesion's import seaborn: 0.4 s), so
    ``resgrad train`` builds train's alone; the other names stay known, so a typo still
    lists them. ``command`` None builds all, for the top-level help.
    """
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
    for name, add in COMMANDS.items():
        if command in (None, name):
            add(sub)
        else:
            sub.add_parser(name)
    for each in sub.choices.values():  # `resgrad train ... --debug` works too
        each.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "train": add_train,
    "bench": add_bench,
    "sweep": add_sweep,
    "report": add_report,
    "export": add_export,
    "lesion": add_lesion,
    "shatter": add_shatter,
    "landscape": add_landscape,
}


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, or None where the top-level parser speaks first (its help, --version, a typo)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
        if arg != "--debug":
            return None
    return None


def _describe(exc: OSError) -> str:
    """One sentence for an OS error: the path and the reason (OutputError says it already)."""
    if isinstance(exc, OutputError):
        return str(exc)
    code = errno.errorcode.get(exc.errno or -1)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}{f' ({code})' if code else ''}."


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser(command_named(argv)).parse_args(argv)
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


def script() -> NoReturn:
    """The ``resgrad`` console script and ``python -m resgrad``: :func:`main`, then exit with its code."""
    # A command creates a million long-lived objects as it imports torch (and torch._dynamo, at
    # torch.optim's first call); at Python's default threshold (700) the collector scanned them all
    # six times meanwhile, 0.4-0.5 s. Collecting the young generation every 10,000 allocations
    # instead lets cyclic garbage live a little longer, and scans them none.
    gc.set_threshold(10_000, 10, 10)
    code = main()
    gc.freeze()  # the process ends: a last collection of those objects would take 0.5 s
    sys.exit(code)
