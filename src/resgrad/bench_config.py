"""What ``resgrad bench`` times and what it gives back: :class:`BenchConfig`, its grid of points, bench.csv's columns.

Each bench option is declared once, as a :class:`BenchConfig` field whose metadata
(``option``: help, choices, bounds, how one value is named) is all that the rest reads:
``resgrad bench``'s flags and their defaults (cli.py), the checks (:meth:`BenchConfig.validate`)
and the command line a bench.md shows (:meth:`BenchConfig.command`). A list field
(``Sequence[...]``) is a flag that takes several values.

Data flow: bench_config (what to time) -> bench_timing (one step, timed; the peak)
-> bench (the run loop: rows) -> bench_report (tables, bench.md, bench.png, files).
This module imports neither torch nor pandas.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import shlex
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resgrad.config import DTYPES as DTYPE_NAMES
from resgrad.config import MAX_SEED, MAX_THREADS, check_depth
from resgrad.errors import UsageError, check_choice

if TYPE_CHECKING:
    import pandas as pd

MODES = ("forward", "forward_backward", "train_step")
BENCH_DEVICES = ("cpu", "cuda")
GRAPH_MODES = ("off", "on")
# The interface of bench.csv, in this order; STATUS_COLUMNS follow them.
COLUMNS = [
    "device",
    "device_name",
    "arch",
    "depth",
    "width",
    "batch_size",
    "mode",
    "dtype",
    "channels_last",
    "compiled",
    "cuda_graphs",
    "median_ms",
    "iqr_ms",
    "images_per_s",
    "gflop",
    "gflop_per_s",
    "pct_of_peak",
    "params",
    "threads",
    "torch_version",
]
STATUS_COLUMNS = ["status", "error"]  # status: ok | oom
# matmul_precision: float32 | tf32 | bfloat16, what the peak's matmul ran in (see bench_timing.measure_peak)
PEAK_COLUMNS = ["device", "device_name", "dtype", "matmul_precision", "matmul_n", "peak_gflop_per_s"]
PARTIAL_NAME = "bench.partial.csv"  # the rows so far, while a bench runs


def _archs() -> tuple[str, ...]:
    from resgrad.models import available_archs  # late: the registry lives with the models (torch)

    return available_archs()


def _fixed_archs() -> dict[str, tuple[int, int]]:
    from resgrad.models import FIXED_ARCHS

    return FIXED_ARCHS


def option(
    default: Any,
    help: str,
    *,
    group: str = "grid",
    each: str | None = None,
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    unit: str = "",
    shape: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    alone: tuple[Any, ...] | None = None,
    check: Callable[[Any], object] | None = None,
) -> Any:
    """Declare one bench option (a ``dataclasses.field`` whose metadata the CLI and the checks read).

    Args:
        default: the bench's default (a tuple for a list field).
        help: one line for ``--help``; the CLI appends the default.
        group: the ``--help`` section (grid, timing and output).
        each: how one value is named in an error (``batch size``); default: the flag's name.
        choices: allowed values, or a callable returning them (for the arch registry).
        low, high: inclusive bounds of a number; ``positive``: > 0; ``unit``: what it counts (seconds).
        shape: a model shape (depth, width): not checked when every arch fixes its own shape.
        flag: the flag, when it is not ``--`` + the field's name with dashes.
        metavar: the flag's placeholder in ``--help``.
        alone: the values a list flag given with none stands for.
        check: an extra check of one value (raises ``UsageError``).
    """
    meta = dict(
        help=help,
        group=group,
        each=each,
        choices=choices,
        low=low,
        high=high,
        positive=positive,
        unit=unit,
        shape=shape,
        flag=flag,
        metavar=metavar,
        alone=alone,
        check=check,
    )
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class BenchConfig:
    """The grid to time, and how long to time each point."""

    devices: Sequence[str] = option(
        ("cpu", "cuda"), "devices to time; an absent one is skipped", each="device", choices=BENCH_DEVICES
    )
    archs: Sequence[str] = option(("plain", "residual"), "models", each="arch", choices=_archs, metavar="ARCH")
    depths: Sequence[int] = option(
        (8, 20),
        "weighted layers, 6n+2 (ignored by the fixed seed archs)",
        each="depth",
        shape=True,
        check=check_depth,
        metavar="DEPTH",
    )
    widths: Sequence[int] = option(
        (16,),
        "channels of the first stage (ignored by the fixed seed archs)",
        each="width",
        shape=True,
        low=1,
        metavar="WIDTH",
    )
    batch_sizes: Sequence[int] = option((128,), "images per step", each="batch size", low=1, metavar="B")
    modes: Sequence[str] = option(
        MODES,
        "forward (no_grad), forward_backward (forward, loss, backward), train_step (+ SGD step)",
        each="mode",
        choices=MODES,
    )
    dtypes: Sequence[str] = option(
        ("float32",), "bfloat16 runs under torch.autocast", each="dtype", choices=DTYPE_NAMES, flag="--dtype"
    )
    channels_last: bool = option(False, "model and input in channels-last memory format")
    compile: bool = option(False, "torch.compile the model (the optimizer step stays eager)")
    cuda_graphs: Sequence[str] = option(
        ("off",),
        "time each CUDA point eagerly (off), as replays of a CUDA graph of the whole step (on), or both side "
        "by side (off on, or the flag alone); CPU points run eagerly",
        choices=GRAPH_MODES,
        metavar="off|on",
        alone=GRAPH_MODES,
    )
    threads: int | None = option(
        None, "torch threads on the CPU (default: torch's choice)", group="timing and output", low=1, high=MAX_THREADS
    )
    min_run_time: float = option(
        0.5,
        "seconds of measurement per point, Timer.blocked_autorange",
        group="timing and output",
        positive=True,
        unit="seconds",
        metavar="SECONDS",
    )
    warmup: int = option(3, "untimed calls before each measurement", group="timing and output", low=0)
    seed: int = option(0, "seeds weights and the random inputs", group="timing and output", low=0, high=MAX_SEED)

    def validate(self) -> BenchConfig:
        """Raise ``UsageError`` on the first bad value; return the config with tuples, duplicates removed.

        Every check is the field's declaration; ``--compile`` with CUDA graphs on is the one
        rule between fields.
        """
        fixed = _fixed_archs()
        checked: dict[str, Any] = {}
        for name, f in FIELDS.items():
            value = getattr(self, name)
            if not is_list(name):
                checked[name] = check_value(name, value)
                continue
            if isinstance(value, (str, int)) or not isinstance(value, Sequence) or not len(value):
                raise UsageError(f"give at least one value for {flag(name)[2:]} as a list, got {value!r}.")
            values = tuple(dict.fromkeys(value))
            if f.metadata["shape"] and all(a in fixed for a in checked["archs"]):  # archs is declared before
                checked[name] = values  # every arch fixes its own depth and width: these are not used
            else:
                checked[name] = tuple(check_value(name, v) for v in values)
        if checked["compile"] and "on" in checked["cuda_graphs"]:
            raise UsageError("give --compile or --cuda-graphs on, not both (torch.compile has its own CUDA graphs).")
        return dataclasses.replace(self, **checked)

    def command(self, out: str | os.PathLike[str] | None = None) -> str:
        """The ``resgrad bench`` command line that runs this grid: every option, each by its flag."""
        parts = ["resgrad", "bench"] + (["--out", str(out)] if out is not None else [])
        for name in FIELDS:
            value = getattr(self, name)
            if value is None or value is False:  # an option left at "not given"
                continue
            if value is True:
                parts.append(flag(name))
            else:  # str() of a float is its shortest exact form: the command gives back the same number
                parts += [flag(name), *map(str, value if is_list(name) else [value])]
        return shlex.join(parts)


# ---------------------------------------------------------------- what the declarations give

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(BenchConfig)}
_TYPES = typing.get_type_hints(BenchConfig)


def is_list(name: str) -> bool:
    """Whether a field takes several values (a flag with ``nargs``)."""
    return typing.get_origin(_TYPES[name]) is Sequence


def kind(name: str) -> type:
    """The type of one value of a field: ``Sequence[int]`` -> int, ``int | None`` -> int."""
    hint = _TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def choices(name: str) -> tuple[Any, ...] | None:
    c = FIELDS[name].metadata["choices"]
    return c() if callable(c) else c


def flag(name: str) -> str:
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def _range_text(name: str) -> str:
    """``a whole number from 1 to 1024``, ``a positive number of seconds (finite)``, ..."""
    meta = FIELDS[name].metadata
    unit = f" of {meta['unit']}" if meta["unit"] else ""
    if kind(name) is float:
        return f"a {'positive ' if meta['positive'] else ''}number{unit} (finite)"
    low, high = meta["low"], meta["high"]
    top = "2**63-1" if high == MAX_SEED else f"{high:g}" if high is not None else None
    if low is not None and top:
        return f"a whole number{unit} from {low:g} to {top}"
    bounds = [
        b
        for b in ("> 0" if meta["positive"] else f">= {low:g}" if low is not None else "", f"<= {top}" if top else "")
        if b
    ]
    return " ".join([f"a whole number{unit}", " and ".join(bounds)]) if bounds else f"a whole number{unit}"


def check_value(name: str, value: Any) -> Any:
    """Check one value of a field (one element of a list field) against its declaration; return it.

    Ints become floats where floats go. The one check of a bench option, whichever way it came.
    """
    meta = FIELDS[name].metadata
    what = meta["each"] or flag(name)[2:]
    want = kind(name)
    if value is None and type(None) in typing.get_args(_TYPES[name]):
        return value
    if want is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{what} must be true or false, got {value!r}.")
        return value
    if want is str:
        allowed = choices(name)
        if allowed is not None:
            check_choice(what, value, allowed)
        elif not isinstance(value, str):
            raise UsageError(f"{what} must be a string, got {value!r}.")
    else:  # a number
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        low, high = meta["low"], meta["high"]
        if (
            not is_number
            or (want is int and not isinstance(value, int))
            or not math.isfinite(value)
            or (meta["positive"] and value <= 0)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise UsageError(f"{what} must be {_range_text(name)}, got {value!r}.")
        value = want(value)
    if meta["check"] is not None:
        meta["check"](value)
    return value


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Point:
    """One timed configuration; a fixed (seed) arch carries its own depth and width."""

    device: str
    dtype: str
    batch_size: int
    mode: str
    depth: int
    width: int
    arch: str
    cuda_graphs: bool = False  # timed as replays of a CUDA graph of the step

    def label(self) -> str:
        graphed = " graphed" if self.cuda_graphs else ""
        return f"{self.device} {self.dtype} {self.arch}-d{self.depth}-w{self.width} b{self.batch_size} {self.mode}{graphed}"


def grid(config: BenchConfig, devices: Sequence[str]) -> list[Point]:
    """Every point for ``devices``; arch varies fastest, then eager/graphed, so twins are timed back to back.

    CUDA graphs apply to CUDA points only: a CPU point is timed eagerly, once.
    """
    fixed = _fixed_archs()
    points: dict[Point, None] = {}  # ordered and without duplicates: a fixed arch gives one point, not one per depth
    graphs = [g == "on" for g in config.cuda_graphs]
    for dev, dt, b, mode, depth, width, graphed, arch in itertools.product(
        devices, config.dtypes, config.batch_sizes, config.modes, config.depths, config.widths, graphs, config.archs
    ):
        d, w = fixed.get(arch, (depth, width))
        points.setdefault(Point(dev, dt, b, mode, d, w, arch, graphed and dev == "cuda"))
    return list(points)


@dataclass
class BenchResult:
    """The rows of a bench run, the peaks they are compared with, and where it ran."""

    config: BenchConfig
    rows: pd.DataFrame = field(repr=False)  # COLUMNS + STATUS_COLUMNS
    peaks: pd.DataFrame = field(repr=False)  # PEAK_COLUMNS
    skipped_devices: list[str]
    machine: dict[str, Any]
    wall_seconds: float
