"""Declared options: the one way a command's config declares an option, and the one check of its values.

A config (``TrainConfig``, ``BenchConfig``, ``LesionConfig``, ``ShatterConfig``, ...) is a
dataclass whose fields are declared with :func:`option`. The field's metadata says all that
the rest of resgrad needs to know: the flag and its ``--help`` line (``resgrad.cli.args``
builds the parser from it), the allowed values and bounds (:func:`check_value`, whichever
way a value came: flag, TOML, JSON or Python), and for run options whether a sweep can vary
it (``axis``), whether a report facets by it (``facet``), whether it changes a run's numbers
(``in_id``) and whether ``build_model`` takes it (``model``).

A field typed ``Sequence[...]`` is a list option: a flag that takes several values, each
checked on its own. Imports neither torch nor pandas.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

from resgrad.errors import UsageError

MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most 2**64-1; sweeps have always allowed this range
MAX_THREADS = 1024  # torch.set_num_threads overflows past 2**31-1 and crashes well below it
DEVICES = ("cpu", "cuda", "auto")


def option(
    default: Any,
    help: str,
    *,
    group: str = "options",
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    unit: str = "",
    each: str | None = None,
    axis: str | None = None,
    grid: list[Any] | None = None,
    facet: bool = False,
    in_id: bool = True,
    id_default: Any = dataclasses.MISSING,
    model: bool = False,
    metavar: str | None = None,
    alone: tuple[Any, ...] | None = None,
    flag: str | None = None,
    check: Callable[[Any], object] | None = None,
) -> Any:
    """Declare one option: a ``dataclasses.field`` whose metadata the CLI, the checks, sweeps and reports read.

    Args:
        default: the default (a tuple for a list option).
        help: one line for ``--help``; the default is appended unless the text names it.
        group: the ``--help`` section.
        choices: allowed values, or a callable returning them (the arch registry).
        low, high: inclusive bounds of a number; ``positive``: > 0; ``unit``: what it counts (seconds).
        each: how one value is named in an error (``batch size``); default: the flag's name.
        axis: run options only: the sweep's plural list flag and TOML key (``depths``).
        grid: the sweep's default list for an axis (default: ``[default]``).
        facet: reports draw one panel per value when a sweep varies it.
        in_id: False for options that do not change a run's numbers (threads, paths).
        id_default: run options added after the first release only: the value that does what runs made
            before the option existed did. The field enters the run id only when it differs from this
            (default: ``default``), so a new default that changes the numbers changes new runs' ids only.
        model: ``build_model`` takes it as a keyword argument (see ``TrainConfig.model_kwargs``).
        metavar: the flag's placeholder in ``--help``.
        alone: the values a list flag given with none stands for.
        flag: the flag, when it is not ``--`` + the field's name with dashes.
        check: an extra check of one value (raises ``UsageError``).
    """
    meta = dict(
        help=help,
        group=group,
        choices=choices,
        low=low,
        high=high,
        positive=positive,
        unit=unit,
        each=each,
        axis=axis,
        grid=grid,
        facet=facet,
        in_id=in_id,
        id_default=default if id_default is dataclasses.MISSING else id_default,
        model=model,
        metavar=metavar,
        alone=alone,
        flag=flag,
        check=check,
    )
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------- options every command shares


def threads_option(group: str = "data and machine") -> Any:
    return option(
        None,
        "torch threads on the CPU (default: torch's choice; 1 where other work shares the cores, since "
        "oversubscribed threads spin)",
        group=group,
        low=1,
        high=MAX_THREADS,
        in_id=False,
    )


def device_option(group: str = "data and machine") -> Any:
    return option("auto", "where to compute: auto = CUDA if present", group=group, choices=DEVICES)


def data_dir_option(group: str = "data and machine") -> Any:
    return option(
        None, "folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)", group=group, in_id=False, metavar="DIR"
    )


# ---------------------------------------------------------------- what the declarations give


@functools.cache
def fields(cls: type) -> dict[str, dataclasses.Field]:
    """The declared fields of a config class, by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_list(cls: type, name: str) -> bool:
    """Whether a field takes several values (``Sequence[...]``)."""
    return typing.get_origin(_hints(cls)[name]) is Sequence


def value_types(cls: type, name: str) -> tuple[type, ...]:
    """The types one value of a field takes: ``int | None`` -> ``(int, NoneType)``, ``Sequence[int]`` -> ``(int,)``."""
    hint = _hints(cls)[name]
    if is_list(cls, name):
        hint = typing.get_args(hint)[0]
    return tuple(a for a in typing.get_args(hint) if a is not Ellipsis) or (hint,)


def kind(cls: type, name: str) -> type:
    """The type of one value, None left out: ``int | None`` -> int."""
    return next(t for t in value_types(cls, name) if t is not type(None))


def choices(cls: type, name: str) -> tuple[Any, ...] | None:
    c = fields(cls)[name].metadata["choices"]
    return c() if callable(c) else c


def flag(cls: type, name: str) -> str:
    return fields(cls)[name].metadata["flag"] or "--" + name.replace("_", "-")


def _what(cls: type, name: str) -> str:
    return fields(cls)[name].metadata["each"] or flag(cls, name)[2:]


def range_text(cls: type, name: str) -> str:
    """``a whole number from 0 to 2**63-1``, ``a finite number of seconds > 0``, ..."""
    meta = fields(cls)[name].metadata
    unit = f" of {meta['unit']}" if meta["unit"] else ""
    number = "a whole number" if kind(cls, name) is int else "a finite number"
    low, high = meta["low"], meta["high"]
    top = "2**63-1" if high == MAX_SEED else f"{high:,}" if high is not None else None
    if low is not None and top:
        return f"{number}{unit} from {low:g} to {top}"
    bounds = ["> 0" if meta["positive"] else f">= {low:g}" if low is not None else "", f"<= {top}" if top else ""]
    return " ".join([number + unit, " and ".join(b for b in bounds if b)]).strip()


def check_value(cls: type, name: str, value: Any) -> Any:
    """Check one value of a field (one element of a list field) against its declaration; return it.

    Ints become floats where floats go. The one check of an option, whichever way the value came.
    """
    meta = fields(cls)[name].metadata
    what = _what(cls, name)
    allowed = value_types(cls, name)
    if value is None:
        if type(None) in allowed:
            return value
        raise UsageError(f"{what} must be given, got None.")
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{what} must be true or false, got {value!r}.")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (int in allowed and not (is_number and isinstance(value, int))) or (float in allowed and not is_number):
        raise UsageError(f"{what} must be {'a whole number' if int in allowed else 'a number'}, got {value!r}.")
    if str in allowed and not isinstance(value, str):
        raise UsageError(f"{what} must be a string, got {value!r}.")
    if is_number:
        low, high = meta["low"], meta["high"]
        if not math.isfinite(value):
            unit = f" of {meta['unit']}" if meta["unit"] else ""
            raise UsageError(f"{what} must be a finite number{unit}, got {value!r}.")
        if (
            (meta["positive"] and value <= 0)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise UsageError(f"{what} must be {range_text(cls, name)}, got {value!r}.")
        if float in allowed:
            value = float(value)
    allowed_values = choices(cls, name)
    if allowed_values is not None and value not in allowed_values:
        raise UsageError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed_values))}.")
    if meta["check"] is not None:
        meta["check"](value)
    return value


def check_list(cls: type, name: str, values: Any) -> tuple[Any, ...]:
    """Check a list field's values: a non-empty list, each value checked, duplicates dropped (first kept)."""
    if isinstance(values, (str, bytes, int, float)) or not isinstance(values, Sequence) or not len(values):
        raise UsageError(f"give at least one value for {flag(cls, name)[2:]} as a list, got {values!r}.")
    return tuple(check_value(cls, name, v) for v in dict.fromkeys(values))


def checked(config: Any, skip: Sequence[str] = ()) -> Any:
    """``config`` with every field (but ``skip``) checked: list fields by :func:`check_list`. Raises ``UsageError``."""
    cls = type(config)
    values = {
        name: check_list(cls, name, getattr(config, name)) if is_list(cls, name) else check_value(cls, name, value)
        for name in fields(cls)
        if name not in skip and ((value := getattr(config, name)) is not None or not is_list(cls, name))
    }
    return dataclasses.replace(config, **values)
