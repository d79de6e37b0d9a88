"""The exceptions that end a command cleanly: bad input (``UsageError``, exit 2) and a failed write (``OutputError``, exit 1)."""

from __future__ import annotations

import errno as errno_mod
import math
import re


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


# Allocation failures: torch's OutOfMemoryError (CUDA), and those that surface as a plain RuntimeError:
# the CPU allocator's, cuDNN's and cuBLAS's.
_OOM_MESSAGES = ("can't allocate memory", "out of memory", "ALLOC_FAILED")
_OOM_SIZE = re.compile(r"(?:tried to allocate|Tried to allocate)\s+([\d.]+)\s*(bytes|[KMGT]iB|B)?")
_UNITS = {"bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def says_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` itself says an allocation failed (CUDA or CPU); :func:`out_of_memory` follows the chain."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)


def oom_cause(exc: BaseException) -> BaseException | None:
    """The first exception that says an allocation failed: ``exc`` itself, or one it was raised from or while handling.

    The chain matters under ``--compile``: dynamo and inductor re-raise an out-of-memory
    error wrapped in their own exception (``BackendCompilerFailed`` and the like).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a chain can loop back on itself
        if says_out_of_memory(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def out_of_memory(exc: BaseException) -> str | None:
    """One sentence for an allocation failure in ``exc`` or its chain, saying how much was asked for; else None."""
    cause = oom_cause(exc)
    if cause is None:
        return None
    match = _OOM_SIZE.search(str(cause))
    asked = ""
    if match:
        size = float(match[1]) * _UNITS.get(match[2] or "bytes", 1)
        asked = f" (one allocation of {size / 2**30:,.2f} GiB)" if size >= 2**30 else f" (one of {size:,.0f} bytes)"
    where = "the GPU" if "CUDA" in str(cause) or "GPU" in str(cause) else "this machine"
    return (
        f"out of memory: the model or its batches needed more memory than {where} could give{asked}; "
        "give a smaller --width, --depth or --batch-size."
    )
