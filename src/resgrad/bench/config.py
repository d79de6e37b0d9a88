"""What ``resgrad bench`` times and what it gives back: :class:`BenchConfig`, its grid of points, bench.csv's columns.

Each bench option is declared once, as a :class:`BenchConfig` field (:func:`resgrad.options.option`),
as every command's options are: ``resgrad bench``'s flags and their defaults, the checks
(:meth:`BenchConfig.validate`) and the command line a bench.md shows (:meth:`BenchConfig.command`)
come from it. A list field (``Sequence[...]``) is a flag that takes several values.
This module imports neither pandas nor the timing code.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resgrad import options
from resgrad.config import DTYPES as DTYPE_NAMES
from resgrad.errors import UsageError
from resgrad.models import FIXED_ARCHS, available_archs, check_depth
from resgrad.options import MAX_SEED, option, threads_option

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
    "noisy",
    "images_per_s",
    "gflop",
    "gflop_per_s",
    "pct_of_peak",
    "params",
    "threads",
    "torch_version",
]
STATUS_COLUMNS = ["status", "error"]  # status: ok | oom
# A point whose IQR is above this fraction of its median is marked noisy (another process was busy, say): its
# median is not a clean number. torch.utils.benchmark warns from 0.1 and calls 0.25 a gross spread.
NOISY_IQR = 0.25
# matmul_precision: float32 | tf32 | bfloat16, what the peak's matmul ran in (see resgrad.bench.timing.measure_peak)
PEAK_COLUMNS = ["device", "device_name", "dtype", "matmul_precision", "matmul_n", "peak_gflop_per_s"]
PARTIAL_NAME = "bench.partial.csv"  # the rows so far, while a bench runs


def grid_option(default: Any, help: str, **kw: Any) -> Any:
    """An option of the ``grid`` section of ``--help``."""
    return option(default, help, group="grid", **kw)


@dataclass
class BenchConfig:
    """The grid to time, and how long to time each point."""

    devices: Sequence[str] = grid_option(
        ("cpu", "cuda"), "devices to time; an absent one is skipped", each="device", choices=BENCH_DEVICES
    )
    archs: Sequence[str] = grid_option(
        ("plain", "residual"), "models", each="arch", choices=available_archs, metavar="ARCH"
    )
    depths: Sequence[int] = grid_option(
        (8, 20),
        "weighted layers, 6n+2 (ignored by the fixed seed archs)",
        each="depth",
        model=True,
        check=check_depth,
        metavar="DEPTH",
    )
    widths: Sequence[int] = grid_option(
        (16,),
        "channels of the first stage (ignored by the fixed seed archs)",
        each="width",
        model=True,
        low=1,
        metavar="WIDTH",
    )
    batch_sizes: Sequence[int] = grid_option((128,), "images per step", each="batch size", low=1, metavar="B")
    modes: Sequence[str] = grid_option(
        MODES,
        "forward (no_grad), forward_backward (forward, loss, backward), train_step (the step `resgrad train` runs: "
        "forward, loss, backward, SGD update)",
        each="mode",
        choices=MODES,
    )
    dtypes: Sequence[str] = grid_option(
        ("float32",), "bfloat16 runs under torch.autocast", each="dtype", choices=DTYPE_NAMES, flag="--dtype"
    )
    channels_last: bool = grid_option(False, "model and input in channels-last memory format")
    compile: bool = grid_option(False, "torch.compile the model (the optimizer step stays eager)")
    cuda_graphs: Sequence[str] = grid_option(
        ("off",),
        "time each CUDA point eagerly (off), as replays of a CUDA graph of the whole step (on), or both side "
        "by side (off on, or the flag alone); CPU points run eagerly",
        choices=GRAPH_MODES,
        metavar="off|on",
        alone=GRAPH_MODES,
    )
    threads: int | None = threads_option(group="timing and output")
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

        Every check is the field's declaration (:func:`resgrad.options.checked`); depth and width
        are not checked when every arch fixes its own shape, and ``--compile`` with CUDA graphs on
        is the one rule between fields.
        """
        archs = options.check_list(BenchConfig, "archs", self.archs)
        shape = [n for n, f in FIELDS.items() if f.metadata["model"]] if all(a in FIXED_ARCHS for a in archs) else []
        config = options.checked(self, skip=shape)
        config = dataclasses.replace(config, **{n: tuple(dict.fromkeys(getattr(self, n))) for n in shape})
        if config.compile and "on" in config.cuda_graphs:
            raise UsageError("give --compile or --cuda-graphs on, not both (torch.compile has its own CUDA graphs).")
        return config

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


FIELDS: dict[str, dataclasses.Field] = options.fields(BenchConfig)


def flag(name: str) -> str:
    return options.flag(BenchConfig, name)


def is_list(name: str) -> bool:
    return options.is_list(BenchConfig, name)


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
    fixed = FIXED_ARCHS
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


def is_noisy(median_ms: float, iqr_ms: float) -> bool:
    """Whether a point's spread (IQR) is large against its median: above :data:`NOISY_IQR` of it."""
    return bool(iqr_ms > NOISY_IQR * median_ms)
