"""Flags from declared options: every command's parser is built from its config class (:mod:`resgrad.options`)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from resgrad import options


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def examples(*commands: str) -> str:
    """The ``examples:`` block of an epilog."""
    return "examples:\n" + "".join(f"  {c}\n" for c in commands)


def paragraph(*texts: str) -> str:
    """Paragraphs of an epilog, each wrapped at 80 columns, after a blank line."""
    return "".join("\n" + textwrap.fill(t, 80) + "\n" for t in texts)


def _shown(value: Any) -> str | None:
    """A default as ``--help`` shows it; None for "not given" (None, False)."""
    if value is None or value is False:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(format(v, "g") if isinstance(v, float) else str(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _argument(cls: type, name: str, axis: bool, help_text: str | None) -> dict[str, Any]:
    """argparse keywords of one declared field: type, nargs, choices, help with the default."""
    f = options.fields(cls)[name]
    meta = f.metadata
    listed = axis or options.is_list(cls, name)
    default = (meta["grid"] or [f.default]) if axis else f.default
    shown = _shown(default)
    text = help_text or meta["help"]
    kw: dict[str, Any] = {"dest": meta["axis"] if axis else name, "default": None}
    kind = options.kind(cls, name)
    if kind is bool:  # off by default: --flag; on or automatic by default: --flag and --no-flag
        kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
    else:
        kw["type"] = whole_number if kind is int else float if kind is float else str
        kw["metavar"] = meta["metavar"] or kw["dest"].upper().replace("_", "-")
        allowed = options.choices(cls, name)
        if allowed is not None and not listed and meta["metavar"] is None:
            kw["choices"], kw["metavar"] = allowed, None
        elif allowed is not None and kw["metavar"] != "|".join(map(str, allowed)):
            text += f"; from {', '.join(map(str, allowed))}"
        if listed:  # given with no value: its `alone` values, else the check's one sentence asking for one
            kw["nargs"] = "*"
    if shown is not None and "(default" not in text:
        text += f" (default: {shown})"
    kw["help"] = text
    return kw


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    sweep: bool = False,
    skip: Sequence[str] = (),
    titles: dict[str, str] | None = None,
    helps: dict[str, str] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """One flag per declared field of ``cls``, in ``--help`` sections by the fields' groups; return the sections.

    Every flag defaults to None ("not given"): :func:`config_from` leaves such a field at the
    class's default (or, in a sweep, at the ``--config`` file's value).

    Args:
        parser: the command's parser.
        cls: a config dataclass declared with :func:`resgrad.options.option`.
        sweep: run options only: a sweep axis becomes its plural list flag (``--depths``).
        skip: fields that get no flag.
        titles: section titles by group name, where they differ.
        helps: help lines by field name, where the command says more than the field.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in options.fields(cls).items():
        if name in skip:
            continue
        axis = sweep and bool(f.metadata["axis"])
        title = (titles or {}).get(f.metadata["group"], f.metadata["group"])
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        flag = "--" + f.metadata["axis"].replace("_", "-") if axis else options.flag(cls, name)
        group.add_argument(flag, **_argument(cls, name, axis, (helps or {}).get(name)))
    return groups


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` gives (not None); a list flag given alone stands for its ``alone`` values."""
    values = {}
    for name, f in options.fields(cls).items():
        value = getattr(args, name, None)
        if value == [] and f.metadata["alone"] is not None:
            value = list(f.metadata["alone"])
        if value is not None:
            values[name] = value
    return values


def config_from(cls: type, args: argparse.Namespace) -> Any:
    """The checked config that the flags give: ``cls(**given).validate()`` (raises ``UsageError``)."""
    return cls(**given(cls, args)).validate()
