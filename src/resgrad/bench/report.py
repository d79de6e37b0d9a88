"""What ``resgrad bench`` writes: the speedup tables, bench.md, bench.png and the files in the output folder.

Reads the :class:`~resgrad.bench.config.BenchResult` that :func:`resgrad.bench.run_bench` returns;
nothing here times anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resgrad.bench.config import COLUMNS, MODES, NOISY_IQR, PARTIAL_NAME, STATUS_COLUMNS, BenchResult
from resgrad.files import prepare_output, write_bytes, write_csv, write_text
from resgrad.models import FIXED_ARCHS
from resgrad.report.markdown import markdown_table

log = logging.getLogger(__name__)

# Files write_bench makes only in some runs: removed when a run does not make them, so none is left from an earlier one.
OPTIONAL_FILES = ("speedup.csv", "bench.png")


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


POINT_KEYS = [
    "device",
    "arch",
    "depth",
    "width",
    "batch_size",
    "mode",
    "dtype",
    "channels_last",
    "compiled",
    "cuda_graphs",
]
ALWAYS_SHOWN = ["arch", "depth", "batch_size", "mode"]


def noisy_note(rows: pd.DataFrame) -> str:
    """A sentence on the noisy points (IQR large against the median); empty when there is none."""
    n = int(rows["noisy"].fillna(False).sum()) if "noisy" in rows else 0
    if not n:
        return ""
    return (
        f"{n} of {len(rows)} points are noisy: their IQR is above {100 * NOISY_IQR:.0f} % of their median (another "
        "process was busy?), so their medians are not clean numbers; rerun them on a quiet machine."
    )


def points_markdown(rows: pd.DataFrame) -> str:
    """The main table, a row per point (as ``resgrad bench`` prints it and bench.md shows it): the keys that vary,
    then median and IQR (ms), whether the point is noisy, throughput, FLOPs, % of peak and parameters."""
    varying, fixed = _varying(rows, POINT_KEYS)
    keys = [c for c in POINT_KEYS if c in varying or c in ALWAYS_SHOWN]
    values = ["median_ms", "iqr_ms", "noisy", "images_per_s", "gflop", "gflop_per_s", "pct_of_peak", "params"]
    if (rows["status"] != "ok").any():
        values.append("status")
    shown = rows[keys + values].assign(noisy=rows["noisy"].fillna(False).astype(bool).map({True: "noisy", False: ""}))
    lines = []
    same = ", ".join(f"{k} = {v}" for k, v in fixed.items() if k not in keys)
    if same:
        lines += [f"Same for every row: {same}.", ""]
    lines.append(markdown_table(shown, _fmt).rstrip("\n"))
    if note := noisy_note(rows):
        lines += ["", note]
    return "\n".join(lines) + "\n"


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
        + (
            f"; GPU {m['gpu']} (CUDA {m['cuda_version']}, cuDNN {m['cudnn_version']}; {m['tf32']})"
            if "gpu" in m
            else ""
        ),
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
    lines += ["## Points", "", points_markdown(rows)]
    speedups = speedup_table(rows)
    if result.rows["device"].nunique() > 1:
        lines += ["## CPU vs CUDA", "", "speedup = CPU median / CUDA median, per point measured on both.", ""]
        sv, _ = _varying(speedups, KEY_COLUMNS)
        shown_keys = [c for c in KEY_COLUMNS if c in sv or c in ALWAYS_SHOWN]
        lines.append(markdown_table(speedups[shown_keys + ["cpu_median_ms", "cuda_median_ms", "speedup"]], _fmt))
    graphed = graphs_table(rows)
    if len(graphed):
        lines += [
            "## Eager vs CUDA graphs",
            "",
            "speedup = eager median / graphed median, per CUDA point timed both ways.",
            "",
        ]
        gv, _ = _varying(graphed, [c for c in KEY_COLUMNS if c != "cuda_graphs"])
        shown_keys = [c for c in KEY_COLUMNS if c in gv or c in ALWAYS_SHOWN]
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
        data=data,
        x="depth",
        y="images_per_s",
        hue="net",
        style="batch",
        col="mode",
        col_order=order,
        row="panel",
        kind="line",
        markers=True,
        dashes=True,
        height=3.2,
        aspect=1.25,
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
