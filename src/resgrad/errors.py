"""The one exception type that means "the user asked for something invalid"."""

from __future__ import annotations


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
    if value is None or value <= 0:
        raise UsageError(f"{what} must be a positive number, got {value!r}.")
