"""What recording gradient norms every step costs a training step, measured side by side.

    python benchmarks/recorder_overhead.py                 # residual, depth 56, width 16, batch 128, CPU
    python benchmarks/recorder_overhead.py --device cuda
    python benchmarks/recorder_overhead.py --device cuda --cuda-graphs   # both variants as CUDA-graph replays

Both variants run in one process on the same weights and a real MNIST batch, in
paired rounds timed with torch.utils.benchmark: each round times a few steps of one
variant, then of the other (the order alternating from round to round), so that a
drift in machine load hits both alike. The script prints the median step time of
each, and the median over rounds of the ratio within a round, with its quartiles
(the goal: at most 1.05). On a shared 2-core machine single rounds scatter by a few
per cent either way; the quartiles say how far.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
from torch.utils import benchmark

from resgrad.compute import keep_freed_memory, resolve_channels_last
from resgrad.cudagraph import WARMUP_STEPS, GraphedTrainStep
from resgrad.data import load_split
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model
from resgrad.train import train_step


def make_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recorder: GradientRecorder | None,
    cuda_graphs: bool = False,
):
    """One training step, as resgrad.train runs it; with a recorder, every step is recorded.

    With ``cuda_graphs`` (CUDA only) the step is a replay of a captured graph, as
    ``resgrad train`` runs it on a GPU; the first ``WARMUP_STEPS`` calls run eagerly.
    """
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5)
    counter = [0]
    if cuda_graphs:
        graphed = GraphedTrainStep(functools.partial(train_step, model, opt, recorder=recorder), x, y, len(y), recorder)
        everything = torch.arange(len(y))  # the graph's batch: all of x, y

        def graphed_step() -> None:
            graphed(everything, counter[0], 0)
            counter[0] += 1

        return graphed_step

    def step() -> None:
        train_step(model, opt, x, y, recorder, counter[0])
        counter[0] += 1

    return step


def measure(
    arch: str = "residual",
    depth: int = 56,
    width: int = 16,
    batch_size: int = 128,
    device: str = "cpu",
    rounds: int = 20,
    steps_per_round: int = 2,
    data_dir: str | None = None,
    cuda_graphs: bool = False,
) -> dict[str, float]:
    """Median ms per training step without and with the recorder, and the median paired ratio.

    Returns ``off_ms``, ``on_ms``, ``ratio`` (median over rounds of on/off within a round),
    ``ratio_q1``/``ratio_q3`` (its quartiles), ``threads`` and ``recorded_steps``.
    """
    dev = torch.device(device)
    split = load_split(False, data_dir, subset=batch_size, device=dev)
    # as resgrad.train runs a step here: on the CPU glibc keeps freed memory and, without batch norm,
    # model and batch are channels-last (resgrad.compute's defaults)
    channels_last = resolve_channels_last(None, dev) and not cuda_graphs
    if dev.type == "cpu":
        keep_freed_memory()
    x = split.images.contiguous(memory_format=torch.channels_last) if channels_last else split.images
    models = {}
    for name in ("off", "on"):  # the same weights; only "on" ever has the recorder's hooks attached
        torch.manual_seed(0)
        models[name] = build_model(arch, depth, width).to(dev)
        if channels_last:
            models[name] = models[name].to(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {"off": [], "on": []}
    with GradientRecorder(models["on"], schedule=1) as rec:
        steps = {
            "off": make_step(models["off"], x, split.labels, None, cuda_graphs),
            "on": make_step(models["on"], x, split.labels, rec, cuda_graphs),
        }
        for name in ("off", "on"):  # warm-up (and graph capture) outside the measurement
            for _ in range(3 + (WARMUP_STEPS + 1) * cuda_graphs):
                steps[name]()
        sync = "torch.cuda.synchronize()" if dev.type == "cuda" else "pass"
        timers = {
            name: benchmark.Timer(stmt=f"step(); {sync}", globals={"step": step, "torch": torch}, num_threads=threads)
            for name, step in steps.items()
        }
        for r in range(rounds):  # paired rounds, the order alternating: drifts in machine load hit both alike
            for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                times[name].append(timers[name].timeit(steps_per_round).mean * 1e3)
        recorded = rec.to_frame()
    assert recorded.step.nunique() > 0
    ratios = [on / off for on, off in zip(times["on"], times["off"])]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {
        "off_ms": statistics.median(times["off"]),
        "on_ms": statistics.median(times["on"]),
        "ratio": statistics.median(ratios),
        "ratio_q1": q1,
        "ratio_q3": q3,
        "threads": threads,
        "recorded_steps": int(recorded.step.nunique()),
        "channels_last": channels_last,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="residual")
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=20, help="paired rounds of both variants (default: 20)")
    p.add_argument("--steps", type=int, default=2, help="training steps per variant and round (default: 2)")
    p.add_argument("--data-dir")
    p.add_argument("--cuda-graphs", action="store_true", help="both variants as CUDA-graph replays (CUDA only)")
    a = p.parse_args()
    if a.cuda_graphs and a.device != "cuda":
        p.error("--cuda-graphs needs --device cuda")
    r = measure(a.arch, a.depth, a.width, a.batch_size, a.device, a.rounds, a.steps, a.data_dir, a.cuda_graphs)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(
        f"recorder overhead: {a.arch} depth {a.depth} width {a.width} batch {a.batch_size} on {name}"
        f"{', CUDA graphs' if a.cuda_graphs else ''}{', channels-last' if r['channels_last'] else ''}, "
        f"{r['threads']} threads, torch {torch.__version__}"
    )
    print(f"  training step without recording: {r['off_ms']:.2f} ms (median of {a.rounds} rounds of {a.steps} steps)")
    print(f"  training step recording every step: {r['on_ms']:.2f} ms")
    print(
        f"  ratio with/without, median of the {a.rounds} paired rounds: {r['ratio']:.3f}"
        f" (quartiles {r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}; goal: <= 1.05)"
    )


if __name__ == "__main__":
    main()
