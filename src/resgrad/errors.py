"""The exceptions that end a command cleanly: bad input (``UsageError``, exit 2) and a failed write (``OutputError``, exit 1)."""

from __future__ import annotations

import errno as errno_mod
import math


class UsageError(ValueError):
    """Bad input from the user: the CLI prints the message and exits with code 2.

    It subclasses ``ValueError`` so that library callers can catch the usual type.
    """


def check_choice(what: str, value: object, allowed: tuple[str, ...] | list[str]) -> None:
    """Raise ``UsageError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}.")


def check_positive(what: str, value: float | int | None, allow_none: bool = False) -> None:
    """Raise ``UsageError`` unless ``value`` is > 0 (or None where allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number, got {value!r}.")
    if value is None or value <= 0:
        raise UsageError(f"{what} must be a positive number, got {value!r}.")


class OutputError(OSError):
    """Writing an output failed (full disk, permission lost, read-only filesystem).

    The message is one sentence naming the path and the OS error; the CLI prints it and
    exits with code 1. ``errno`` is the original error's.
    """

    def __init__(self, path: object, cause: OSError) -> None:
        reason = getattr(cause, "reason", None) or cause.strerror or str(cause) or type(cause).__name__
        code = errno_mod.errorcode.get(cause.errno or -1)
        super().__init__(f"could not write {path}: {reason}{f' ({code})' if code and code not in reason else ''}.")
        self.errno = cause.errno
        self.path = path
        self.reason = reason
