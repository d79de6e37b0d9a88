"""Timing benchmarks: forward, backward and training-step throughput of plain/residual nets.

``run_bench(config)`` times every point of a grid (device x dtype x batch size x
mode x depth x width x arch) with ``torch.utils.benchmark.Timer``, counts each
step's FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and divides the
achieved rate by a dense-matmul peak measured in the same run on the same device
and dtype. ``write_bench(result, out_dir)`` writes ``bench.csv``, ``bench.md``,
``bench.png`` and, when more than one device ran, ``speedup.csv``.

Inputs are random tensors of MNIST's shape (B, 1, 28, 28) already on the device:
the numbers are the model's compute, not data loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resgrad.errors import UsageError, check_choice
from resgrad.files import write_bytes, write_csv, write_text
from resgrad.models import FIXED_ARCHS, available_archs, build_model, check_depth, count_params

log = logging.getLogger(__name__)

MODES = ("forward", "forward_backward", "train_step")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BENCH_DEVICES = ("cpu", "cuda")
# The interface of bench.csv, in this order; STATUS_COLUMNS follow them.
COLUMNS = [
    "device", "device_name", "arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled",
    "median_ms", "iqr_ms", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params", "threads", "torch_version",
]
STATUS_COLUMNS = ["status", "error"]  # status: ok | oom
PEAK_COLUMNS = ["device", "device_name", "dtype", "matmul_n", "peak_gflop_per_s"]
# Side of the square matmul that measures a device's peak: big enough to reach it, small enough to be quick.
PEAK_MATMUL_N = {"cpu": 2048, "cuda": 8192}
PARTIAL_NAME = "bench.partial.csv"
LR, MOMENTUM = 0.01, 0.5  # resgrad train's SGD defaults


# ---------------------------------------------------------------- config


@dataclass
class BenchConfig:
    """The grid to time, and how long to time each point."""

    devices: Sequence[str] = ("cpu", "cuda")  # a listed device that is absent is skipped with a warning
    archs: Sequence[str] = ("plain", "residual")
    depths: Sequence[int] = (8, 20)  # 6n+2; ignored by the fixed (seed) archs
    widths: Sequence[int] = (16,)  # ignored by the fixed (seed) archs
    batch_sizes: Sequence[int] = (128,)
    modes: Sequence[str] = MODES
    dtypes: Sequence[str] = ("float32",)  # bfloat16 runs under torch.autocast
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (the optimizer step stays eager)
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    min_run_time: float = 0.5  # seconds of measurement per point (blocked_autorange)
    warmup: int = 3  # untimed calls before the measurement
    seed: int = 0

    def validate(self) -> "BenchConfig":
        """Raise ``UsageError`` on the first bad value; return the config with tuples, duplicates removed."""

        def unique(name: str, values: Sequence[Any]) -> tuple[Any, ...]:
            if isinstance(values, (str, int)) or not len(values):
                raise UsageError(f"give at least one value for {name} as a list, got {values!r}.")
            return tuple(dict.fromkeys(values))

        devices, archs = unique("devices", self.devices), unique("archs", self.archs)
        depths, widths = unique("depths", self.depths), unique("widths", self.widths)
        batch_sizes, modes, dtypes = unique("batch-sizes", self.batch_sizes), unique("modes", self.modes), unique("dtype", self.dtypes)
        for d in devices:
            check_choice("device", d, BENCH_DEVICES)
        for a in archs:
            check_choice("arch", a, available_archs())
        if any(a not in FIXED_ARCHS for a in archs):
            for d in depths:
                check_depth(d)
            for w in widths:
                if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                    raise UsageError(f"width must be a whole number >= 1, got {w!r}.")
        for b in batch_sizes:
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise UsageError(f"batch size must be a whole number >= 1, got {b!r}.")
        for m in modes:
            check_choice("mode", m, MODES)
        for t in dtypes:
            check_choice("dtype", t, tuple(DTYPES))
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"threads must be a whole number >= 1, got {self.threads!r}.")
        if not (isinstance(self.min_run_time, (int, float)) and self.min_run_time > 0):
            raise UsageError(f"min-run-time must be a positive number of seconds, got {self.min_run_time!r}.")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"warmup must be a whole number >= 0, got {self.warmup!r}.")
        return dataclasses.replace(
            self, devices=devices, archs=archs, depths=depths, widths=widths,
            batch_sizes=batch_sizes, modes=modes, dtypes=dtypes, min_run_time=float(self.min_run_time),
        )

    def command(self, out: str | os.PathLike[str] | None = None) -> str:
        """The ``resgrad bench`` command line that runs this grid."""
        parts = ["resgrad", "bench"]
        if out is not None:
            parts += ["--out", str(out)]
        for flag, values in (
            ("--devices", self.devices), ("--archs", self.archs), ("--depths", self.depths), ("--widths", self.widths),
            ("--batch-sizes", self.batch_sizes), ("--modes", self.modes), ("--dtype", self.dtypes),
        ):
            parts += [flag, *map(str, values)]
        parts += ["--channels-last"] * self.channels_last + ["--compile"] * self.compile
        if self.threads is not None:
            parts += ["--threads", str(self.threads)]
        parts += ["--min-run-time", f"{self.min_run_time:g}", "--warmup", str(self.warmup), "--seed", str(self.seed)]
        return shlex.join(parts)


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

    def label(self) -> str:
        return f"{self.device} {self.dtype} {self.arch}-d{self.depth}-w{self.width} b{self.batch_size} {self.mode}"


def grid(config: BenchConfig, devices: Sequence[str]) -> list[Point]:
    """Every point for ``devices``; arch varies fastest, so twins are timed back to back."""
    points: dict[Point, None] = {}
    for dev in devices:
        for dt in config.dtypes:
            for b in config.batch_sizes:
                for mode in config.modes:
                    for depth in config.depths:
                        for width in config.widths:
                            for arch in config.archs:
                                d, w = FIXED_ARCHS.get(arch, (depth, width))
                                points.setdefault(Point(dev, dt, b, mode, d, w, arch))
    return list(points)


def available_devices(devices: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``devices`` into (present, absent) on this machine."""
    present, absent = [], []
    for d in devices:
        ok = d == "cpu" or (d == "cuda" and torch.cuda.is_available())
        (present if ok else absent).append(d)
    return present, absent


# ---------------------------------------------------------------- one step


def make_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    dtype: str = "float32",
    optimizer: torch.optim.Optimizer | None = None,
) -> Callable[[], None]:
    """A no-argument function doing one ``mode`` step of ``model`` on (x, y).

    - ``forward``: the forward pass under ``torch.no_grad()``;
    - ``forward_backward``: forward, cross-entropy loss and backward (gradients reset first);
    - ``train_step``: the same plus ``optimizer.step()``, in the order resgrad's training loop uses.

    ``bfloat16`` runs forward and loss under ``torch.autocast``. On CUDA the step ends with
    ``torch.cuda.synchronize()``, so that a timer around it measures the finished work.
    """
    check_choice("mode", mode, MODES)
    check_choice("dtype", dtype, tuple(DTYPES))
    if mode == "train_step" and optimizer is None:
        raise ValueError("mode 'train_step' needs an optimizer.")
    device = x.device
    cuda = device.type == "cuda"
    if dtype == "float32":
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    else:
        autocast = lambda: torch.autocast(device.type, dtype=DTYPES[dtype])  # noqa: E731

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(x)
        if cuda:
            torch.cuda.synchronize(device)

    def forward_backward() -> None:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)

    def train_step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        loss.backward()
        optimizer.step()  # type: ignore[union-attr]
        if cuda:
            torch.cuda.synchronize(device)

    return {"forward": forward, "forward_backward": forward_backward, "train_step": train_step}[mode]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (2 per multiply-add).

    Only matmuls and convolutions (and their backward) are counted; element-wise work,
    such as the residual addition or the optimizer's update, is not.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_fn(fn: Callable[[], object], threads: int, min_run_time: float, warmup: int = 3, label: str = "") -> tuple[float, float]:
    """(median, IQR) in seconds of ``fn()`` by ``Timer.blocked_autorange``, after ``warmup`` untimed calls.

    ``Timer``'s default timer also synchronises CUDA when it reads the clock (before and
    after each block of calls); the CUDA steps of :func:`make_step` synchronise inside too.
    """
    # Importing torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on
    # CPU-only machines: noise for a person watching the bench.
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        ext_log.setLevel(level)

    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


# torch.OutOfMemoryError from torch 2.5; before it, the same class lived only under torch.cuda.
OutOfMemoryError: type[RuntimeError] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# Allocation failures that surface as a plain RuntimeError: the CPU allocator's, cuDNN's and cuBLAS's.
_OOM_MESSAGES = ("can't allocate memory", "out of memory", "ALLOC_FAILED")


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` says an allocation failed (CUDA or CPU)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)


# ---------------------------------------------------------------- peak


def measure_peak(device: str, dtype: str, threads: int, min_run_time: float) -> tuple[int, float]:
    """(n, GFLOP/s) of an n x n dense matmul in ``dtype`` on ``device``: the reference for % of peak."""
    n = PEAK_MATMUL_N[device]
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=DTYPES[dtype], generator=gen)
    b = torch.randn(n, n, device=dev, dtype=DTYPES[dtype], generator=gen)
    out = torch.empty(n, n, device=dev, dtype=DTYPES[dtype])
    cuda = dev.type == "cuda"

    def matmul() -> None:
        torch.mm(a, b, out=out)
        if cuda:
            torch.cuda.synchronize(dev)

    median_s, _ = time_fn(matmul, threads, min_run_time, warmup=2, label=f"peak {device} {dtype}")
    return n, 2 * n**3 / median_s / 1e9


# ---------------------------------------------------------------- one point


def _device_name(device: str) -> str:
    from resgrad.train import device_name

    return device_name(torch.device(device))


def time_point(
    point: Point,
    threads: int,
    min_run_time: float,
    warmup: int = 3,
    channels_last: bool = False,
    compile: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the model of ``point``, count its FLOPs and time its step; one row without the peak columns.

    Raises:
        RuntimeError: ``OutOfMemoryError`` or another allocation failure when the point does not fit (see :func:`is_oom`).
    """
    device = torch.device(point.device)
    torch.manual_seed(seed)
    # The input first, so that a batch far too large for the device fails at once.
    x = torch.randn(point.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (point.batch_size,), device=device)
    model = build_model(point.arch, point.depth, point.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM) if point.mode == "train_step" else None
    flops = count_flops(make_step(model, x, y, point.mode, point.dtype, opt))  # eager, before any compile
    timed = model
    if compile:
        torch._dynamo.reset()  # a fresh model per point: never hit dynamo's recompile limit and fall back to eager
        timed = torch.compile(model)
    step = make_step(timed, x, y, point.mode, point.dtype, opt)
    median_s, iqr_s = time_fn(step, threads, min_run_time, warmup=max(warmup, 2 if compile else 0), label=point.label())
    return {
        "median_ms": median_s * 1e3,
        "iqr_ms": iqr_s * 1e3,
        "images_per_s": point.batch_size / median_s,
        "gflop": flops / 1e9,
        "gflop_per_s": flops / 1e9 / median_s,
        "params": count_params(model),
    }


# ---------------------------------------------------------------- the grid


@dataclass
class BenchResult:
    """The rows of a bench run, the peaks they are compared with, and where it ran."""

    config: BenchConfig
    rows: pd.DataFrame = field(repr=False)  # COLUMNS + STATUS_COLUMNS
    peaks: pd.DataFrame = field(repr=False)  # PEAK_COLUMNS
    skipped_devices: list[str]
    machine: dict[str, Any]
    wall_seconds: float


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _machine(devices: Sequence[str], threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cpu": _device_name("cpu"),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if "cuda" in devices:
        info["gpu"] = _device_name("cuda")
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
        # float32 convs may run as TF32 while the float32 matmul peak does not (torch's defaults)
        info["tf32"] = (
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
            f"cudnn.benchmark={torch.backends.cudnn.benchmark}"
        )
    return info


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_bench(
    config: BenchConfig,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> BenchResult:
    """Time every point of ``config``'s grid on the listed devices that are present.

    Args:
        config: the grid; validated here.
        progress: a tqdm bar over points (default: when stderr is a terminal).
        checkpoint: if given, the rows so far are written there (atomically) after every
            point, so an interrupted run keeps what it measured.

    Raises:
        UsageError: bad input, or none of the listed devices is present.
    """
    from tqdm.auto import tqdm

    config = config.validate()
    present, absent = available_devices(config.devices)
    if not present:
        raise UsageError(
            f"none of the listed devices ({', '.join(absent)}) is present: torch sees no CUDA device here; "
            "add --devices cpu."
        )
    for d in absent:
        log.warning("device %r is listed but absent (torch sees no CUDA device): skipped; timing %s only.", d, ", ".join(present))
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()

    names = {d: _device_name(d) for d in present}

    def measure_peaks(peaks: dict[tuple[str, str], float]) -> None:
        # The best of a measurement before and one after the points: a busy moment lowers one, not both.
        for d in present:
            for dt in config.dtypes:
                n, gflops = measure_peak(d, dt, threads, config.min_run_time)
                peaks[d, dt] = max(gflops, peaks.get((d, dt), 0.0))
                log.info("peak %s %s: %.1f GFLOP/s (%d x %d matmul)", d, dt, gflops, n, n)

    peaks: dict[tuple[str, str], float] = {}
    measure_peaks(peaks)

    rows: list[dict[str, Any]] = []
    points = grid(config, present)
    with tqdm(points, desc="bench", unit="point", disable=not _progress_enabled(progress)) as bar:
        for p in bar:
            bar.set_postfix_str(p.label(), refresh=False)
            row: dict[str, Any] = {
                "device": p.device, "device_name": names[p.device], "arch": p.arch, "depth": p.depth, "width": p.width,
                "batch_size": p.batch_size, "mode": p.mode, "dtype": p.dtype, "channels_last": config.channels_last,
                "compiled": config.compile, "median_ms": math.nan, "iqr_ms": math.nan, "images_per_s": math.nan,
                "gflop": math.nan, "gflop_per_s": math.nan, "pct_of_peak": math.nan, "params": None,
                "threads": threads, "torch_version": torch.__version__, "status": "ok", "error": "",
            }
            try:
                row.update(time_point(p, threads, config.min_run_time, config.warmup, config.channels_last, config.compile, config.seed))
                row["pct_of_peak"] = 100 * row["gflop_per_s"] / peaks[p.device, p.dtype]  # provisional until the end
            except RuntimeError as exc:  # OutOfMemoryError is one
                if not is_oom(exc):
                    raise
                row.update(status="oom", error=str(exc).strip().splitlines()[0][:300])
                log.warning("%s: out of memory, recorded and skipped", p.label())
            # Outside the except block, so the traceback no longer holds the point's tensors.
            if row["status"] == "oom":
                _free(p.device)
            rows.append(row)
            if checkpoint is not None:
                write_csv(checkpoint, pd.DataFrame(rows, columns=COLUMNS + STATUS_COLUMNS))

    measure_peaks(peaks)
    peak_frame = pd.DataFrame(
        [(d, names[d], dt, PEAK_MATMUL_N[d], g) for (d, dt), g in peaks.items()], columns=PEAK_COLUMNS
    )
    frame = pd.DataFrame(rows, columns=COLUMNS + STATUS_COLUMNS)
    frame["pct_of_peak"] = 100 * frame["gflop_per_s"] / pd.Series(
        [peaks[d, dt] for d, dt in zip(frame["device"], frame["dtype"])], index=frame.index, dtype=float
    )
    frame["params"] = frame["params"].astype("Int64")  # None for an out-of-memory point
    return BenchResult(config, frame, peak_frame, absent, _machine(present, threads), time.perf_counter() - t_start)


# ---------------------------------------------------------------- tables and plot

KEY_COLUMNS = ["arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled"]


def speedup_table(rows: pd.DataFrame) -> pd.DataFrame:
    """CPU vs CUDA per point measured on both: ``cpu_median_ms``, ``cuda_median_ms``, ``speedup`` (cpu / cuda)."""

    ok = rows[rows["status"] == "ok"]
    cpu = ok[ok["device"] == "cpu"][KEY_COLUMNS + ["median_ms"]].rename(columns={"median_ms": "cpu_median_ms"})
    cuda = ok[ok["device"] == "cuda"][KEY_COLUMNS + ["median_ms"]].rename(columns={"median_ms": "cuda_median_ms"})
    if cpu.empty or cuda.empty:
        return pd.DataFrame(columns=KEY_COLUMNS + ["cpu_median_ms", "cuda_median_ms", "speedup"])
    both = cpu.merge(cuda, on=KEY_COLUMNS, how="inner")
    both["speedup"] = both["cpu_median_ms"] / both["cuda_median_ms"]
    return both


def _fmt(value: Any, column: str) -> str:

    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float):
        if column == "images_per_s":
            return f"{value:,.0f}"
        if column in ("pct_of_peak", "speedup"):
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (numbers right-aligned)."""

    cols = list(frame.columns)
    right = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    for rec in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, c) for v, c in zip(rec, cols)) + " |")
    return "\n".join(lines) + "\n"


def _varying(rows: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``columns`` into those that vary over ``rows`` and the constant ones with their value."""
    varying, fixed = [], {}
    for c in columns:
        values = rows[c].dropna().unique() if len(rows) else []
        if len(values) > 1:
            varying.append(c)
        elif len(values) == 1:
            fixed[c] = values[0]
    return varying, fixed


def bench_markdown(result: BenchResult, out: str | os.PathLike[str] | None = None) -> str:
    """The readable report: how it ran, the peaks, the table of points, the speedups."""
    rows = result.rows
    m = result.machine
    lines = [
        "# resgrad bench",
        "",
        "```",
        result.config.command(out),
        "```",
        "",
        f"- machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['platform']}"
        + (f"; GPU {m['gpu']} (CUDA {m['cuda_version']}, cuDNN {m['cudnn_version']}; {m['tf32']})" if "gpu" in m else ""),
        f"- torch {m['torch_version']}, Python {m['python_version']}, torch threads: {m['threads']}, {m['date']}",
        f"- {len(rows)} points in {result.wall_seconds:.0f} s"
        + (f"; skipped (absent): {', '.join(result.skipped_devices)}" if result.skipped_devices else ""),
        "- timing: `torch.utils.benchmark.Timer.blocked_autorange` "
        f"(min_run_time {result.config.min_run_time:g} s, warm-up calls: {result.config.warmup}); median and IQR per step "
        "over the timed blocks (few blocks when a step is long next to min_run_time: then the IQR says little). "
        "Inputs are random tensors already on the device (no data loading). "
        "forward = no_grad forward; forward_backward = forward, cross-entropy, backward; "
        "train_step = that plus an SGD(momentum) step.",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and backward); "
        "% of peak = achieved GFLOP/s / the dense n x n matmul below, same device and dtype "
        "(the better of one measurement before the points and one after).",
        "",
        "## Peak (dense matmul)",
        "",
        markdown_table(result.peaks),
    ]
    shown = ["device", "arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled"]
    varying, fixed = _varying(rows, shown)
    always = ["arch", "depth", "batch_size", "mode"]
    keys = [c for c in shown if c in varying or c in always]
    values = ["median_ms", "iqr_ms", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params"]
    if (rows["status"] != "ok").any():
        values.append("status")
    lines += ["## Points", ""]
    if fixed:
        lines += ["Same for every row: " + ", ".join(f"{k} = {v}" for k, v in fixed.items() if k not in keys) + ".", ""]
    lines.append(markdown_table(rows[keys + values]))
    speedups = speedup_table(rows)
    if result.rows["device"].nunique() > 1:
        lines += ["## CPU vs CUDA", "", "speedup = CPU median / CUDA median, per point measured on both.", ""]
        sv, _ = _varying(speedups, KEY_COLUMNS)
        lines.append(markdown_table(speedups[[c for c in KEY_COLUMNS if c in sv or c in always] + ["cpu_median_ms", "cuda_median_ms", "speedup"]]))
    return "\n".join(lines)


def bench_plot(rows: pd.DataFrame) -> bytes | None:
    """PNG bytes: throughput vs depth, plain vs residual, one panel per device (and dtype) and mode.

    The fixed (seed) archs are left out: their depth is not a point on this axis. None
    when there is nothing to draw.
    """
    import io

    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib import ticker

    data = rows[(rows["status"] == "ok") & ~rows["arch"].isin(list(FIXED_ARCHS))].copy()
    if data.empty:
        return None
    data["depth"] = data["depth"].astype(int)
    multi_width = data["width"].nunique() > 1
    data["net"] = data["arch"] + (" w" + data["width"].astype(str) if multi_width else "")
    data["batch"] = "batch " + data["batch_size"].astype(str)
    panel = data["device"].astype(str)
    for c in ("dtype", "channels_last", "compiled"):
        if data[c].nunique() > 1:
            panel = panel + " · " + (data[c].astype(str) if c == "dtype" else data[c].map({True: c.replace("_", " "), False: "not " + c.replace("_", " ")}))
    data["panel"] = panel
    order = [m for m in MODES if m in set(data["mode"])]
    g = sns.relplot(
        data=data, x="depth", y="images_per_s", hue="net", style="batch", col="mode", col_order=order, row="panel",
        kind="line", markers=True, dashes=True, height=3.2, aspect=1.25,
        facet_kws={"sharey": "row", "margin_titles": True},
    )
    g.set(yscale="log", xticks=sorted(data["depth"].unique()))
    g.set_axis_labels("depth (weighted layers)", "images / s (log)")
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    for ax in g.axes.flat:
        ax.grid(True, which="both", alpha=0.3)
        # plain numbers (600, 2000) rather than 6x10^2; minor ticks labelled only on short ranges
        ax.yaxis.set_major_formatter(ticker.LogFormatter())
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    g.figure.suptitle("Throughput vs depth: plain vs residual", y=1.02)
    buf = io.BytesIO()
    g.figure.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(g.figure)
    return buf.getvalue()


def write_bench(result: BenchResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``bench.csv``, ``bench.md``, ``bench.png`` (and ``speedup.csv`` for two devices) into ``out_dir``.

    Each file is written atomically; the checkpoint file of :func:`run_bench` is removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "bench.csv", result.rows[COLUMNS + STATUS_COLUMNS])
    if result.rows["device"].nunique() > 1:
        write_csv(out_dir / "speedup.csv", speedup_table(result.rows))
    write_text(out_dir / "bench.md", bench_markdown(result, out_dir))
    png = bench_plot(result.rows)
    if png is not None:
        write_bytes(out_dir / "bench.png", png)
    else:
        log.warning("no successful point of a plain or residual net: bench.png not drawn.")
    (out_dir / PARTIAL_NAME).unlink(missing_ok=True)
    return out_dir
