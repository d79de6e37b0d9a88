"""Timing benchmarks: forward, backward and training-step throughput of plain/residual nets.

``run_bench(config)`` times every point of a grid (device x dtype x batch size x
mode x depth x width x arch) with ``torch.utils.benchmark.Timer``, counts each
step's FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and divides the
achieved rate by a dense-matmul peak measured in the same run on the same device
and dtype. ``resgrad.bench.report.write_bench(result, out_dir)`` writes ``bench.csv``,
``bench.md``, ``bench.png`` and, when more than one device ran, ``speedup.csv``.

Inputs are random tensors of MNIST's shape (B, 1, 28, 28) already on the device:
the numbers are the model's compute, not data loading.

Data flow: :mod:`resgrad.bench.config` (what to time: :class:`BenchConfig`, the grid, the
columns) -> :mod:`resgrad.bench.timing` (one step, timed; the peak) -> this module (the run
loop, one row per point) -> :mod:`resgrad.bench.report` (tables, bench.md, bench.png, the files).
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from resgrad.bench.config import (
    COLUMNS,
    NOISY_IQR,
    PEAK_COLUMNS,
    STATUS_COLUMNS,
    BenchConfig,
    BenchResult,
    Point,
    grid,
    is_noisy,
)
from resgrad.bench.timing import (
    PEAK_MATMUL_N,
    convs_use_tf32,
    count_flops,
    make_step,
    measure_peak,
    oom_message,
    time_fn,
)
from resgrad.config import TrainConfig
from resgrad.cudagraph import make_graphed
from resgrad.errors import UsageError
from resgrad.files import write_csv
from resgrad.models import build_model, count_params
from resgrad.progress import Progress
from resgrad.train import device_name, make_optimizer

log = logging.getLogger(__name__)


def available_devices(devices: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``devices`` into (present, absent) on this machine."""
    present, absent = [], []
    for d in devices:
        ok = d == "cpu" or (d == "cuda" and torch.cuda.is_available())
        (present if ok else absent).append(d)
    return present, absent


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
    model = build_model(point.arch, depth=point.depth, width=point.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    # The optimizer of a default `resgrad train` run (SGD with its momentum).
    opt = make_optimizer(TrainConfig(), model.parameters()) if point.mode == "train_step" else None
    flops = count_flops(make_step(model, x, y, point.mode, point.dtype, opt))  # eager, before any compile
    timed = model
    if compile:
        torch._dynamo.reset()  # a fresh model per point: never hit dynamo's recompile limit and fall back to eager
        timed = torch.compile(model)
    step = make_step(timed, x, y, point.mode, point.dtype, opt)
    if point.cuda_graphs:
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


# ---------------------------------------------------------------- the run loop


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
        progress: a tqdm bar over points (default: when stderr is a terminal; else a line per point), False: none.
        checkpoint: if given, the rows so far are written there (atomically) after every
            point, so an interrupted run keeps what it measured.

    Raises:
        UsageError: bad input, or none of the listed devices is present.
    """
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
            d,
            ", ".join(present),
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
    with Progress(len(points), "bench", "point", progress) as shown:
        for p in points:
            row: dict[str, Any] = {
                "device": p.device,
                "device_name": names[p.device],
                "arch": p.arch,
                "depth": p.depth,
                "width": p.width,
                "batch_size": p.batch_size,
                "mode": p.mode,
                "dtype": p.dtype,
                "channels_last": config.channels_last,
                "compiled": config.compile,
                "cuda_graphs": p.cuda_graphs,
                "median_ms": math.nan,
                "iqr_ms": math.nan,
                "noisy": None,
                "images_per_s": math.nan,
                "gflop": math.nan,
                "gflop_per_s": math.nan,
                "pct_of_peak": math.nan,
                "params": None,
                "threads": threads,
                "torch_version": torch.__version__,
                "status": "ok",
                "error": "",
            }
            try:
                row.update(
                    time_point(
                        p,
                        threads,
                        config.min_run_time,
                        config.warmup,
                        config.channels_last,
                        config.compile,
                        config.seed,
                    )
                )
                row["pct_of_peak"] = 100 * row["gflop_per_s"] / peaks[p.device, p.dtype]  # provisional until the end
                row["noisy"] = is_noisy(row["median_ms"], row["iqr_ms"])
                if row["noisy"]:
                    log.warning(
                        "%s: noisy: its IQR (%.3g ms) is %.0f %% of its median (%.3g ms), above %.0f %%: another "
                        "process was busy? The median is not a clean number; rerun on a quiet machine.",
                        p.label(),
                        row["iqr_ms"],
                        100 * row["iqr_ms"] / row["median_ms"],
                        row["median_ms"],
                        100 * NOISY_IQR,
                    )
            except Exception as exc:  # OutOfMemoryError, or under compile an exception wrapping one
                message = oom_message(exc)  # a string: no reference to the exception outlives this block
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
            shown.done(f"{p.label()}: {row['median_ms']:.3g} ms" if row["status"] == "ok" else f"{p.label()}: oom")

    measure_peaks()
    peak_frame = pd.DataFrame(
        [(d, names[d], dt, precisions[d, dt], PEAK_MATMUL_N[d], g) for (d, dt), g in peaks.items()],
        columns=PEAK_COLUMNS,
    )
    frame = pd.DataFrame(rows, columns=COLUMNS + STATUS_COLUMNS)
    frame["pct_of_peak"] = (
        100
        * frame["gflop_per_s"]
        / pd.Series([peaks[d, dt] for d, dt in zip(frame["device"], frame["dtype"])], index=frame.index, dtype=float)
    )
    frame["params"] = frame["params"].astype("Int64")  # None for an out-of-memory point
    frame["noisy"] = frame["noisy"].astype("boolean")  # empty for an out-of-memory point
    return BenchResult(config, frame, peak_frame, absent, _machine(present, threads), time.perf_counter() - t_start)
