"""How fast the reduced depth sweep could be in float32 on this machine: its runs' parts, timed one by one.

    python benchmarks/depth_sweep_floor.py                  # ~3 minutes on 2 idle cores

``benchmarks/depth_sweep_speed.py`` times the reduced depth sweep whole (16 runs: plain and
residual, depths 8 and 56, no norm and batch norm, two inits; 300 steps of 64, a test on 2,000
images every 50 steps, 2 workers of 1 thread; the schedule is read from its flags). This script times what such a run
is made of, in one process on one thread: a training step of 64 (``resgrad.train.train_step``,
SGD with momentum 0.9, MNIST batches; after warm-up steps) and an evaluation on 2,000 test images
(``resgrad.compute.evaluate``), for each arch, depth and norm, contiguous and channels-last. A
run's time is then 300 steps and 6 evaluations (after steps 49, 99, ..., 299); the init changes neither.

It prints each run's estimate and the floor: the wall time of the 16 runs on 2 workers if every
run of a depth trained and evaluated at the fastest speed measured at that depth, whatever its
norm and layout. A sweep cannot finish sooner in float32 with these kernels (start-up and
reading MNIST come on top); ``depth_sweep_speed.py``'s goal asks for half the time of before.
"""

from __future__ import annotations

import argparse
import time

import torch
from depth_sweep_speed import FIXED, GRID

from resgrad.compute import EVAL_BATCH, evaluate, keep_freed_memory, resolve_channels_last
from resgrad.data import load_split
from resgrad.models import build_model
from resgrad.train import train_step


def values(flags: list[str], flag: str) -> list[str]:
    """The values that follow ``flag`` in a command line's ``flags``."""
    start = flags.index(flag) + 1
    end = next((i for i in range(start, len(flags)) if flags[i].startswith("--")), len(flags))
    return flags[start:end]


# The reduced depth sweep's schedule, read from depth_sweep_speed.py's flags.
STEPS, BATCH, EVAL_EVERY = (int(values(FIXED, f)[0]) for f in ("--steps", "--batch-size", "--eval-every"))
TEST_IMAGES, WORKERS = (int(values(FIXED, f)[0]) for f in ("--test-subset", "--workers"))
EVALS = sum((s + 1) % EVAL_EVERY == 0 or s == STEPS - 1 for s in range(STEPS))  # when resgrad.train evaluates
WIDTH = int(values(GRID, "--widths")[0])
ARCHS, DEPTHS, NORMS = (values(GRID, f) for f in ("--archs", "--depths", "--norms"))
RUNS_PER_POINT = len(values(GRID, "--inits")) * len(values(GRID, "--seeds"))  # neither changes a run's time


def time_parts(
    arch: str, depth: int, norm: str, channels_last: bool, train_set, test_set, steps: int, warmup: int
) -> tuple[float, float]:
    """Seconds per training step of 64 and per evaluation on the test set, for one net in one layout."""
    torch.manual_seed(0)
    model = build_model(arch, depth, WIDTH, norm=norm)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(train_set), (BATCH,), generator=gen) for _ in range(warmup + steps)]
    for i, idx in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        train_step(model, opt, train_set.images[idx], train_set.labels[idx], None, i, 0, channels_last=channels_last)
    step = (time.perf_counter() - t0) / steps
    evaluate(model, test_set, EVAL_BATCH["cpu"], "float32", channels_last)  # warm-up
    t0 = time.perf_counter()
    evaluate(model, test_set, EVAL_BATCH["cpu"], "float32", channels_last)
    return step, time.perf_counter() - t0


def floor_seconds(fastest: dict[int, float]) -> float:
    """The sweep's wall time on the workers if each depth's runs all took its fastest run's seconds."""
    runs_per_depth = len(ARCHS) * len(NORMS) * RUNS_PER_POINT
    return sum(runs_per_depth * t for t in fastest.values()) / WORKERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per net and layout (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: 5)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    a = p.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    cpu = torch.device("cpu")
    train_set = load_split(True, a.data_dir, device=cpu)
    test_set = load_split(False, a.data_dir, subset=TEST_IMAGES, device=cpu)
    print(
        f"parts of a reduced-depth-sweep run: width {WIDTH}, batch {BATCH}, 1 thread, float32, torch {torch.__version__}; "
        f"a run = {STEPS} steps + {EVALS} evaluations on {TEST_IMAGES:,} images"
    )
    fastest: dict[int, float] = {}
    for depth in map(int, DEPTHS):
        for arch in ARCHS:
            for norm in NORMS:
                default = resolve_channels_last(None, cpu, norm)
                for channels_last in (False, True):
                    step, ev = time_parts(arch, depth, norm, channels_last, train_set, test_set, a.steps, a.warmup)
                    run = STEPS * step + EVALS * ev
                    fastest[depth] = min(fastest.get(depth, run), run)
                    layout = "channels-last" if channels_last else "contiguous"
                    mark = "  (resgrad's default)" if channels_last == default else ""
                    print(
                        f"   {arch}-{depth} {norm:5} {layout:13} step {step * 1e3:6.1f} ms  evaluation {ev:5.2f} s  "
                        f"run {run:5.1f} s{mark}"
                    )
    floor = floor_seconds(fastest)
    shown = ", ".join(f"depth {d}: {t:.1f} s" for d, t in fastest.items())
    print(f"fastest run per depth: {shown}")
    runs = len(DEPTHS) * len(ARCHS) * len(NORMS) * RUNS_PER_POINT
    print(f"floor of the {runs} runs on {WORKERS} workers: {floor:.0f} s")


if __name__ == "__main__":
    main()
