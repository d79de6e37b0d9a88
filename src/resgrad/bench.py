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
import itertools
import logging
import math
import os
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resgrad.errors import UsageError, check_choice
from resgrad.files import prepare_output, write_bytes, write_csv, write_text
from resgrad.markdown import markdown_table
from resgrad.models import FIXED_ARCHS, available_archs, build_model, check_depth, count_params
from resgrad.train import MAX_SEED, MAX_THREADS, TrainConfig, device_name, progress_enabled

log = logging.getLogger(__name__)

MODES = ("forward", "forward_backward", "train_step")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BENCH_DEVICES = ("cpu", "cuda")
GRAPH_MODES = ("off", "on")
# The interface of bench.csv, in this order; STATUS_COLUMNS follow them.
COLUMNS = [
    "device", "device_name", "arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled",
    "cuda_graphs",
    "median_ms", "iqr_ms", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params", "threads", "torch_version",
]
STATUS_COLUMNS = ["status", "error"]  # status: ok | oom
# matmul_precision: float32 | tf32 | bfloat16, what the peak's matmul ran in (see measure_peak)
PEAK_COLUMNS = ["device", "device_name", "dtype", "matmul_precision", "matmul_n", "peak_gflop_per_s"]
# Side of the square matmul that measures a device's peak: big enough to reach it, small enough to be quick.
PEAK_MATMUL_N = {"cpu": 2048, "cuda": 8192}
PARTIAL_NAME = "bench.partial.csv"
# Files write_bench makes only in some runs: removed when a run does not make them, so none is left from an earlier one.
OPTIONAL_FILES = ("speedup.csv", "bench.png")


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
    cuda_graphs: Sequence[str] = ("off",)  # "off", "on" or both: each CUDA point eager and/or as a CUDA graph replay
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
        batch_sizes, modes = unique("batch-sizes", self.batch_sizes), unique("modes", self.modes)
        dtypes = unique("dtype", self.dtypes)
        cuda_graphs = unique("cuda-graphs", self.cuda_graphs)
        for g in cuda_graphs:
            check_choice("cuda-graphs", g, GRAPH_MODES)
        if self.compile and "on" in cuda_graphs:
            raise UsageError("give --compile or --cuda-graphs on, not both (torch.compile has its own CUDA graphs).")
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
        if self.threads is not None and (not isinstance(self.threads, int) or not 1 <= self.threads <= MAX_THREADS):
            raise UsageError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {self.threads!r}.")
        if not (isinstance(self.min_run_time, (int, float)) and self.min_run_time > 0):
            raise UsageError(f"min-run-time must be a positive number of seconds, got {self.min_run_time!r}.")
        if self.min_run_time == math.inf:  # blocked_autorange would never return
            raise UsageError("min-run-time must be a finite number of seconds, got inf.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}.")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"warmup must be a whole number >= 0, got {self.warmup!r}.")
        return dataclasses.replace(
            self, devices=devices, archs=archs, depths=depths, widths=widths,
            batch_sizes=batch_sizes, modes=modes, dtypes=dtypes, min_run_time=float(self.min_run_time),
            cuda_graphs=cuda_graphs,
        )

    def command(self, out: str | os.PathLike[str] | None = None) -> str:
        """The ``resgrad bench`` command line that runs this grid."""
        parts = ["resgrad", "bench"]
        if out is not None:
            parts += ["--out", str(out)]
        for flag, values in (
            ("--devices", self.devices), ("--archs", self.archs), ("--depths", self.depths),
            ("--widths", self.widths), ("--batch-sizes", self.batch_sizes), ("--modes", self.modes),
            ("--dtype", self.dtypes), ("--cuda-graphs", self.cuda_graphs),
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
    cuda_graphs: bool = False  # timed as replays of a CUDA graph of the step

    def label(self) -> str:
        graphed = " graphed" if self.cuda_graphs else ""
        return f"{self.device} {self.dtype} {self.arch}-d{self.depth}-w{self.width} b{self.batch_size} {self.mode}{graphed}"


def grid(config: BenchConfig, devices: Sequence[str]) -> list[Point]:
    """Every point for ``devices``; arch varies fastest, then eager/graphed, so twins are timed back to back.

    CUDA graphs apply to CUDA points only: a CPU point is timed eagerly, once.
    """
    points: dict[Point, None] = {}  # ordered and without duplicates: a fixed arch gives one point, not one per depth
    graphs = [g == "on" for g in config.cuda_graphs]
    for dev, dt, b, mode, depth, width, graphed, arch in itertools.product(
        devices, config.dtypes, config.batch_sizes, config.modes, config.depths, config.widths, graphs, config.archs
    ):
        d, w = FIXED_ARCHS.get(arch, (depth, width))
        points.setdefault(Point(dev, dt, b, mode, d, w, arch, graphed and dev == "cuda"))
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
    synchronize: bool = True,
) -> Callable[[], None]:
    """A no-argument function doing one ``mode`` step of ``model`` on (x, y).

    - ``forward``: the forward pass under ``torch.no_grad()``;
    - ``forward_backward``: forward, cross-entropy loss and backward (gradients reset first);
    - ``train_step``: the same plus ``optimizer.step()``, in the order resgrad's training loop uses.

    ``bfloat16`` runs forward and loss under ``torch.autocast``. On CUDA the step ends with
    ``torch.cuda.synchronize()``, so that a timer around it measures the finished work,
    unless ``synchronize`` is False (a step to capture as a CUDA graph).
    """
    check_choice("mode", mode, MODES)
    check_choice("dtype", dtype, tuple(DTYPES))
    if mode == "train_step" and optimizer is None:
        raise ValueError("mode 'train_step' needs an optimizer.")
    device = x.device
    cuda = device.type == "cuda" and synchronize
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


def time_fn(
    fn: Callable[[], object], threads: int, min_run_time: float, warmup: int = 3, label: str = ""
) -> tuple[float, float]:
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


def _says_oom(exc: BaseException) -> bool:
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)
    )


def oom_cause(exc: BaseException) -> BaseException | None:
    """The first exception that says an allocation failed: ``exc`` itself, or one it was raised from or while handling.

    The chain matters under ``--compile``: dynamo and inductor re-raise an out-of-memory
    error wrapped in their own exception (``BackendCompilerFailed`` and the like).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a chain can loop back on itself
        if _says_oom(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` or an exception in its chain says an allocation failed (CUDA or CPU)."""
    return oom_cause(exc) is not None


def _oom_message(exc: BaseException) -> str | None:
    """The first line of the allocation failure in ``exc``'s chain (at most 300 characters); None if there is none."""
    cause = oom_cause(exc)
    if cause is None:
        return None
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


# ---------------------------------------------------------------- peak


def convs_use_tf32() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 (torch's default: yes).

    Read through torch's newer ``fp32_precision`` flags where they exist ("none" defers to
    the level above), since reading the legacy ``allow_tf32`` raises once a user has set
    the newer ones.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:  # torch < 2.9: only the legacy flag
        return bool(torch.backends.cudnn.allow_tf32)
    for level in (conv, torch.backends.cudnn, torch.backends):
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False


@contextlib.contextmanager
def matmul_precision_like_convs(device: str, dtype: str) -> Iterator[str]:
    """Let a float32 CUDA matmul use TF32 exactly when the convolutions may; yield the precision it runs in.

    Without this, torch's defaults time the float32 peak without TF32 while the convs of
    the points use it, and % of peak can pass 100. The previous setting is restored.
    """
    if device != "cuda" or dtype != "float32":
        yield dtype
        return
    before = torch.get_float32_matmul_precision()
    tf32 = convs_use_tf32()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # high: TF32 on a GPU that has it
    try:
        yield "tf32" if tf32 else "float32"
    finally:
        torch.set_float32_matmul_precision(before)


def measure_peak(device: str, dtype: str, threads: int, min_run_time: float) -> tuple[int, float, str]:
    """(n, GFLOP/s, precision) of an n x n dense matmul in ``dtype`` on ``device``: the reference for % of peak.

    precision is what the matmul ran in: ``dtype``, or ``tf32`` for float32 on CUDA when
    cuDNN's convolutions may use TF32 (see :func:`matmul_precision_like_convs`).
    """
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

    with matmul_precision_like_convs(device, dtype) as precision:
        median_s, _ = time_fn(matmul, threads, min_run_time, warmup=2, label=f"peak {device} {dtype}")
    return n, 2 * n**3 / median_s / 1e9, precision


# ---------------------------------------------------------------- one point


def _device_name(device: str) -> str:
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
        RuntimeError: ``OutOfMemoryError`` or another allocation failure when the point does not fit
            (see :func:`is_oom`; under ``compile`` it may come wrapped in another exception).
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
    defaults = TrainConfig()  # the SGD settings of resgrad train
    opt = None
    if point.mode == "train_step":
        opt = torch.optim.SGD(model.parameters(), lr=defaults.lr, momentum=defaults.momentum)
    flops = count_flops(make_step(model, x, y, point.mode, point.dtype, opt))  # eager, before any compile
    timed = model
    if compile:
        torch._dynamo.reset()  # a fresh model per point: never hit dynamo's recompile limit and fall back to eager
        timed = torch.compile(model)
    step = make_step(timed, x, y, point.mode, point.dtype, opt)
    if point.cuda_graphs:
        from resgrad.cudagraph import make_graphed

        replay = make_graphed(make_step(model, x, y, point.mode, point.dtype, opt, synchronize=False))

        def step() -> None:
            replay()
            torch.cuda.synchronize(device)

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
        # float32 convs may run as TF32; the float32 peak's matmul follows them (matmul_precision_like_convs)
        info["tf32"] = (
            f"float32 convolutions {'may use' if convs_use_tf32() else 'do not use'} TF32, "
            f"float32 matmul precision {torch.get_float32_matmul_precision()!r}, "
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
        log.warning(
            "device %r is listed but absent (torch sees no CUDA device): skipped; timing %s only.",
            d, ", ".join(present),
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()

    names = {d: _device_name(d) for d in present}

    peaks: dict[tuple[str, str], float] = {}
    precisions: dict[tuple[str, str], str] = {}

    def measure_peaks() -> None:
        # The best of a measurement before and one after the points: a busy moment lowers one, not both.
        for d, dt in itertools.product(present, config.dtypes):
            n, gflops, precisions[d, dt] = measure_peak(d, dt, threads, config.min_run_time)
            peaks[d, dt] = max(gflops, peaks.get((d, dt), 0.0))
            log.info("peak %s %s (%s): %.1f GFLOP/s (%d x %d matmul)", d, dt, precisions[d, dt], gflops, n, n)

    measure_peaks()

    rows: list[dict[str, Any]] = []
    points = grid(config, present)
    with tqdm(points, desc="bench", unit="point", disable=not progress_enabled(progress)) as bar:
        for p in bar:
            bar.set_postfix_str(p.label(), refresh=False)
            row: dict[str, Any] = {
                "device": p.device, "device_name": names[p.device], "arch": p.arch, "depth": p.depth,
                "width": p.width, "batch_size": p.batch_size, "mode": p.mode, "dtype": p.dtype,
                "channels_last": config.channels_last, "compiled": config.compile, "cuda_graphs": p.cuda_graphs,
                "median_ms": math.nan,
                "iqr_ms": math.nan, "images_per_s": math.nan, "gflop": math.nan, "gflop_per_s": math.nan,
                "pct_of_peak": math.nan, "params": None, "threads": threads, "torch_version": torch.__version__,
                "status": "ok", "error": "",
            }
            try:
                row.update(time_point(
                    p, threads, config.min_run_time, config.warmup, config.channels_last, config.compile, config.seed
                ))
                row["pct_of_peak"] = 100 * row["gflop_per_s"] / peaks[p.device, p.dtype]  # provisional until the end
            except Exception as exc:  # OutOfMemoryError, or under compile an exception wrapping one
                message = _oom_message(exc)  # a string: no reference to the exception outlives this block
                if message is None:
                    raise
                row.update(status="oom", error=message)
                log.warning("%s: out of memory, recorded and skipped", p.label())
            # Outside the except block, so the traceback no longer holds the point's tensors.
            if row["status"] == "oom":
                _free(p.device)
            rows.append(row)
            if checkpoint is not None:
                write_csv(checkpoint, pd.DataFrame(rows, columns=COLUMNS + STATUS_COLUMNS))

    measure_peaks()
    peak_frame = pd.DataFrame(
        [(d, names[d], dt, precisions[d, dt], PEAK_MATMUL_N[d], g) for (d, dt), g in peaks.items()],
        columns=PEAK_COLUMNS,
    )
    frame = pd.DataFrame(rows, columns=COLUMNS + STATUS_COLUMNS)
    frame["pct_of_peak"] = 100 * frame["gflop_per_s"] / pd.Series(
        [peaks[d, dt] for d, dt in zip(frame["device"], frame["dtype"])], index=frame.index, dtype=float
    )
    frame["params"] = frame["params"].astype("Int64")  # None for an out-of-memory point
    return BenchResult(config, frame, peak_frame, absent, _machine(present, threads), time.perf_counter() - t_start)


# ---------------------------------------------------------------- tables and plot

KEY_COLUMNS = ["arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled", "cuda_graphs"]


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


def graphs_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Eager vs CUDA graphs per CUDA point timed both ways: ``eager_median_ms``, ``graphed_median_ms``, ``speedup``."""
    keys = [c for c in KEY_COLUMNS if c != "cuda_graphs"]
    ok = rows[(rows["status"] == "ok") & (rows["device"] == "cuda")]
    graphed = ok["cuda_graphs"].astype(bool)
    eager = ok[~graphed][keys + ["median_ms"]].rename(columns={"median_ms": "eager_median_ms"})
    both = eager.merge(
        ok[graphed][keys + ["median_ms"]].rename(columns={"median_ms": "graphed_median_ms"}), on=keys, how="inner"
    )
    both["speedup"] = both["eager_median_ms"] / both["graphed_median_ms"]
    return both


def _fmt(value: Any, column: str) -> str:
    """A cell of bench.md: blank for a missing value, numbers rounded per column."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float):
        if column == "images_per_s":
            return f"{value:,.0f}"
        if column in ("pct_of_peak", "speedup"):
            return f"{value:.1f}"
        return f"{value:.4g}"
    return str(value)


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
        + (f"; GPU {m['gpu']} (CUDA {m['cuda_version']}, cuDNN {m['cudnn_version']}; {m['tf32']})"
           if "gpu" in m else ""),
        f"- torch {m['torch_version']}, Python {m['python_version']}, torch threads: {m['threads']}, {m['date']}",
        f"- {len(rows)} points in {result.wall_seconds:.0f} s"
        + (f"; skipped (absent): {', '.join(result.skipped_devices)}" if result.skipped_devices else ""),
        "- timing: `torch.utils.benchmark.Timer.blocked_autorange` "
        f"(min_run_time {result.config.min_run_time:g} s, warm-up calls: {result.config.warmup}); "
        "median and IQR per step "
        "over the timed blocks (few blocks when a step is long next to min_run_time: then the IQR says little). "
        "Inputs are random tensors already on the device (no data loading). "
        "forward = no_grad forward; forward_backward = forward, cross-entropy, backward; "
        "train_step = that plus an SGD(momentum) step.",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and backward); "
        "% of peak = achieved GFLOP/s / the dense n x n matmul below, same device and dtype "
        "(the better of one measurement before the points and one after). "
        "`matmul_precision` is what that matmul ran in: on CUDA a float32 peak uses TF32 exactly when "
        "cuDNN may run the float32 convolutions in TF32 (torch's default), so that both sides use the same precision.",
        "",
        "## Peak (dense matmul)",
        "",
        markdown_table(result.peaks, _fmt),
    ]
    shown = ["device", "arch", "depth", "width", "batch_size", "mode", "dtype", "channels_last", "compiled", "cuda_graphs"]
    varying, fixed = _varying(rows, shown)
    always = ["arch", "depth", "batch_size", "mode"]
    keys = [c for c in shown if c in varying or c in always]
    values = ["median_ms", "iqr_ms", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params"]
    if (rows["status"] != "ok").any():
        values.append("status")
    lines += ["## Points", ""]
    if fixed:
        lines += ["Same for every row: " + ", ".join(f"{k} = {v}" for k, v in fixed.items() if k not in keys) + ".", ""]
    lines.append(markdown_table(rows[keys + values], _fmt))
    speedups = speedup_table(rows)
    if result.rows["device"].nunique() > 1:
        lines += ["## CPU vs CUDA", "", "speedup = CPU median / CUDA median, per point measured on both.", ""]
        sv, _ = _varying(speedups, KEY_COLUMNS)
        shown_keys = [c for c in KEY_COLUMNS if c in sv or c in always]
        lines.append(markdown_table(speedups[shown_keys + ["cpu_median_ms", "cuda_median_ms", "speedup"]], _fmt))
    graphed = graphs_table(rows)
    if len(graphed):
        lines += ["## Eager vs CUDA graphs", "", "speedup = eager median / graphed median, per CUDA point timed both ways.", ""]
        gv, _ = _varying(graphed, [c for c in KEY_COLUMNS if c != "cuda_graphs"])
        shown_keys = [c for c in KEY_COLUMNS if c in gv or c in always]
        lines.append(markdown_table(graphed[shown_keys + ["eager_median_ms", "graphed_median_ms", "speedup"]], _fmt))
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
    for c in ("dtype", "channels_last", "compiled", "cuda_graphs"):
        if data[c].nunique() > 1:
            name = c.replace("_", " ")
            values = data[c].astype(str) if c == "dtype" else data[c].map({True: name, False: "not " + name})
            panel = panel + " · " + values
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

    Each file is written atomically. A ``speedup.csv`` or ``bench.png`` that this result does
    not make is removed, so none is left from an earlier run; so is the checkpoint file of
    :func:`run_bench`. Other files in ``out_dir`` are left alone (``benchmarks/gpu.sh``
    keeps its log and other stages' folders there), which is why the folder is not swapped
    whole. A folder that is neither new, empty nor a bench folder is refused (``UsageError``).
    """
    out_dir = prepare_output(out_dir, "bench")  # new, empty or a bench folder; refused before any write
    write_csv(out_dir / "bench.csv", result.rows[COLUMNS + STATUS_COLUMNS])
    write_text(out_dir / "bench.md", bench_markdown(result, out_dir))
    made = set()
    if result.rows["device"].nunique() > 1:
        made.add(write_csv(out_dir / "speedup.csv", speedup_table(result.rows)).name)
    png = bench_plot(result.rows)
    if png is not None:
        made.add(write_bytes(out_dir / "bench.png", png).name)
    else:
        log.warning("no successful point of a plain or residual net: bench.png not drawn.")
    for name in set(OPTIONAL_FILES) - made:
        (out_dir / name).unlink(missing_ok=True)
    (out_dir / PARTIAL_NAME).unlink(missing_ok=True)
    return out_dir
