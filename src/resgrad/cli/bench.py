"""`resgrad bench`: its flags come from the BenchConfig field declarations."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from resgrad.cli.args import add_options, config_from, examples, paragraph

if TYPE_CHECKING:
    from resgrad.bench.config import BenchConfig

log = logging.getLogger("resgrad")

# ---------------------------------------------------------------- bench


def epilog_bench() -> str:
    from resgrad.bench.config import COLUMNS, STATUS_COLUMNS

    return examples(
        "resgrad bench --out runs/bench",
        "resgrad bench --devices cpu --depths 8 14 20 32 44 56 --batch-sizes 32 128 --out results/bench/cpu",
        "resgrad bench --devices cuda --dtype float32 bfloat16 --depths 8 56 110 --batch-sizes 128 512 "
        "--out runs/bench-gpu",
        "resgrad bench --devices cuda --compile --depths 56 --modes train_step --out runs/bench-compiled",
        "resgrad bench --devices cuda --cuda-graphs off on --depths 8 56 --modes train_step --out runs/bench-graphs",
    ) + paragraph(
        f"DIR gets bench.csv (one row per point: {', '.join(COLUMNS)}, then {' and '.join(STATUS_COLUMNS)}, "
        "status being ok or oom; noisy: the IQR is above 25 % of the median, so the median is not a clean "
        "number), bench.md (readable table, peaks, command and machine, eager vs CUDA graphs "
        "where both ran), bench.png (throughput vs depth) and, when CPU and CUDA both ran, speedup.csv; a "
        "speedup.csv or bench.png an earlier run left in DIR is removed when this run makes none, other files "
        "there are kept. Inputs are random tensors on the device: compute only, no data loading. The "
        "train_step mode times resgrad.train.train_step, the step `resgrad train` runs. A listed device that "
        "is absent is skipped with a warning.",
    )


def add_bench(sub: argparse._SubParsersAction) -> None:
    from resgrad.bench.config import BenchConfig

    p = sub.add_parser(
        "bench",
        help="time forward, backward and training steps per device, arch, depth and batch size",
        description="Time plain and residual nets with torch.utils.benchmark: forward, forward+backward and the "
        "full training step, per device, arch, depth, width, batch size and dtype; FLOPs per step and % of a "
        "dense-matmul peak measured in the same run.",
        epilog=epilog_bench(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, BenchConfig)  # one flag per BenchConfig field, all from its declaration
    g = next(g for g in p._action_groups if g.title == "timing and output")
    g.add_argument("--quiet", action="store_true", help="no progress (bar or lines) and no table; warnings only")
    g.add_argument(
        "--out", type=Path, default=Path("runs/bench"), metavar="DIR", help="folder to write (default: runs/bench)"
    )
    p.set_defaults(func=cmd_bench)


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The checked ``BenchConfig`` that ``resgrad bench``'s flags give (raises ``UsageError``)."""
    from resgrad.bench.config import BenchConfig

    return config_from(BenchConfig, args)


def cmd_bench(args: argparse.Namespace) -> int:
    from resgrad.bench.config import PARTIAL_NAME
    from resgrad.bench.report import noisy_note, points_markdown, write_bench
    from resgrad.bench.run import run_bench
    from resgrad.files import prepare_output

    config = bench_config(args)
    prepare_output(args.out, "bench")  # refused before timing, not after
    result = run_bench(config, progress=False if args.quiet else None, checkpoint=args.out / PARTIAL_NAME)
    write_bench(result, args.out)
    if not args.quiet:
        rows = result.rows
        oom = int((rows["status"] == "oom").sum())
        print(
            f"{len(rows)} points on {', '.join(rows['device'].unique())} in {result.wall_seconds:.0f} s"
            + (f" ({oom} out of memory)" if oom else "")
            + f" -> {args.out}/bench.csv, bench.md, bench.png"
        )
        print(points_markdown(rows), end="")
    elif note := noisy_note(result.rows):
        log.warning("%s", note)
    return 0
