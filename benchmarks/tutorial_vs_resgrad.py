"""Three comparisons measured side by side, printed as ratios.

    python benchmarks/tutorial_vs_resgrad.py                 # small defaults, ~4 minutes on 2 CPU cores
    python benchmarks/tutorial_vs_resgrad.py --steps 500 --repeats 5 --threads 2

0. End to end, whole processes, float32: ``resgrad train --arch seed-residual --epochs 1``
   (resgrad's defaults: batch 128, the recorder every 10 steps, one test pass, the run
   folder written) against the tutorial's own script, ``benchmarks/tutorial_script.py``
   (DataLoader, ToTensor, batch 64, one epoch, one test pass), in alternating pairs; the
   median wall times give the ratio tutorial / resgrad (the goal: >= 2). resgrad with
   the tutorial's batch of 64 is timed beside them, for the same work.

1. resgrad's training step against the tutorial's original loop, same model
   (``seed-residual``), batch 64, SGD(lr=0.01, momentum=0.5), cross-entropy:
   - tutorial: ``DataLoader(shuffle=True)`` over ``torchvision.datasets.MNIST`` with
     ``Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``, ``loss.item()`` every step;
   - resgrad: the step of ``resgrad.train``: MNIST as normalised tensors on the device
     (``load_split``), seeded index batches (``endless_batches``), losses kept on the
     device and checked for divergence as ``train`` does, and the gradient recorder at
     ``resgrad train``'s default schedule (every 10 steps; ``--no-recorder`` to drop it).
   Both run the same number of steps, in alternating repeats; the medians give images/s
   and the ratio resgrad / tutorial (the goal: >= 1.5). One-off set-up (reading MNIST) is
   left out of both and printed on its own.

2. ``resgrad bench``'s median for one point against a hand-written
   ``torch.utils.benchmark`` measurement of the same step, in alternating repeats: the
   ratio of the medians (the goal: within 10 %).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from resgrad.bench.config import BenchConfig
from resgrad.bench.run import run_bench
from resgrad.compute import keep_freed_memory, resolve_channels_last
from resgrad.data import endless_batches, load_split, resolve_data_dir
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model
from resgrad.schedules import every
from resgrad.train import train_step

BATCH = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- 0. end to end


def compare_end_to_end(
    pairs: int, threads: int | None, data_dir: str | None, epochs: int = 1, images: int | None = None
) -> dict[str, object]:
    """Wall seconds of whole processes: the tutorial's script and ``resgrad train`` (default and batch 64), alternating.

    ``images``: train on the first this many training images only (the test of this script).
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else dict(os.environ)
    data = str(resolve_data_dir(data_dir))
    script = Path(__file__).with_name("tutorial_script.py")
    commands = {
        "tutorial": [sys.executable, str(script), data, str(epochs), *([str(images)] if images else [])],
        "resgrad": [sys.executable, "-m", "resgrad", "train", "--arch", "seed-residual", "--epochs", str(epochs)],
        "resgrad_batch_64": [
            sys.executable, "-m", "resgrad", "train", "--arch", "seed-residual", "--epochs", str(epochs),
            "--batch-size", "64",
        ],
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(pairs):
            order = list(commands) if i % 2 == 0 else list(reversed(commands))  # alternating, so drift hits all
            for name in order:
                cmd = commands[name]
                if name != "tutorial":
                    cmd = [*cmd, "--data-dir", data, "--device", "cpu", "--quiet", "--out", f"{tmp}/{name}-{i}"]
                    cmd += ["--train-subset", str(images)] if images else []
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                seconds[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "seconds": seconds,
        "median_s": med,
        "ratio": med["tutorial"] / med["resgrad"],
        "ratio_batch_64": med["tutorial"] / med["resgrad_batch_64"],
        "paired": [t / r for t, r in zip(seconds["tutorial"], seconds["resgrad"])],
    }


# ---------------------------------------------------------------- 1. the tutorial's loop


def tutorial_loader(data_dir: str | None, batch_size: int = BATCH) -> torch.utils.data.DataLoader:
    """The tutorial's input pipeline, unchanged."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_dataset = datasets.MNIST(root=str(resolve_data_dir(data_dir)), train=True, transform=transform, download=True)
    return torch.utils.data.DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)


def tutorial_steps(loader, model: nn.Module, optimizer, criterion, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps of the tutorial's loop (a fresh epoch iterator each call)."""
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for images, labels in loader:
            images = images.to(device)
            labels = labels.to(device)
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            done += 1
            if done == steps:
                break
    _sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- 1. resgrad's step


class ResgradSteps:
    """resgrad.train's training step on device-resident MNIST, kept across calls like one long run."""

    def __init__(
        self, split, model: nn.Module, device: torch.device, recorder: GradientRecorder | None, seed: int = 0
    ) -> None:
        # As resgrad.train by default: channels-last on the CPU (model and batches), contiguous on CUDA.
        self.channels_last = resolve_channels_last(None, device)
        if device.type == "cpu":
            keep_freed_memory()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.split, self.model, self.device, self.recorder = split, model, device, recorder
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
        self.batches = endless_batches(len(split), BATCH, seed)
        self.check_every = 1 if device.type == "cpu" else 50  # as resgrad.train
        self.step = 0

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` more steps."""
        split, model, opt, rec, device = self.split, self.model, self.opt, self.recorder, self.device
        losses = torch.full((steps,), math.nan, device=device)
        checked = 0
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            epoch, idx = next(self.batches)
            idx = idx.to(device, non_blocking=True)
            x, y = split.images[idx], split.labels[idx]
            losses[i] = train_step(model, opt, x, y, rec, self.step, epoch, channels_last=self.channels_last)
            if (i + 1) % self.check_every == 0 or i == steps - 1:
                chunk = losses[checked : i + 1].cpu()
                if not torch.isfinite(chunk).all():
                    raise RuntimeError(f"the loss diverged at step {self.step}")
                checked = i + 1
            self.step += 1
        _sync(device)
        return time.perf_counter() - t0


def compare_training(
    steps: int, repeats: int, device: torch.device, data_dir: str | None, recorder: bool
) -> dict[str, float]:
    t = time.perf_counter()
    loader = tutorial_loader(data_dir)
    setup_tutorial = time.perf_counter() - t
    t = time.perf_counter()
    split = load_split(True, data_dir, device=device)
    setup_resgrad = time.perf_counter() - t

    torch.manual_seed(0)
    tut_model = build_model("seed-residual").to(device)
    torch.manual_seed(0)
    res_model = build_model("seed-residual").to(device)
    tut_opt = torch.optim.SGD(tut_model.parameters(), lr=0.01, momentum=0.5)
    criterion = nn.CrossEntropyLoss()
    with GradientRecorder(res_model, every(10)) if recorder else contextlib.nullcontext() as rec:
        res = ResgradSteps(split, res_model, device, rec)
        tutorial_steps(loader, tut_model, tut_opt, criterion, 5, device)  # warm-up, outside the measurement
        res.run(5)
        tut_s, res_s = [], []
        for _ in range(repeats):  # alternating, so both see the same machine
            tut_s.append(tutorial_steps(loader, tut_model, tut_opt, criterion, steps, device))
            res_s.append(res.run(steps))
    tut = steps * BATCH / statistics.median(tut_s)
    ours = steps * BATCH / statistics.median(res_s)
    return {
        "tutorial_images_per_s": tut,
        "resgrad_images_per_s": ours,
        "ratio": ours / tut,
        "tutorial_runs": [steps * BATCH / s for s in tut_s],
        "resgrad_runs": [steps * BATCH / s for s in res_s],
        "setup_tutorial_s": setup_tutorial,
        "setup_resgrad_s": setup_resgrad,
    }


# ---------------------------------------------------------------- 2. bench vs a hand-written Timer


def hand_timed_step(arch: str, depth: int, width: int, batch: int, device: torch.device, min_run_time: float) -> float:
    """Median ms of one training step, measured directly with torch.utils.benchmark."""
    from torch.utils import benchmark

    torch.manual_seed(0)
    model = build_model(arch, depth, width).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    for _ in range(3):
        step()
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def compare_bench(
    arch: str, depth: int, width: int, batch: int, device: torch.device, min_run_time: float, repeats: int
) -> dict[str, float]:
    config = BenchConfig(
        devices=[device.type],
        archs=[arch],
        depths=[depth],
        widths=[width],
        batch_sizes=[batch],
        modes=["train_step"],
        dtypes=["float32"],
        threads=torch.get_num_threads(),
        min_run_time=min_run_time,
    )
    ours, hand = [], []
    for _ in range(repeats):
        ours.append(float(run_bench(config, progress=False).rows["median_ms"].iloc[0]))
        hand.append(hand_timed_step(arch, depth, width, batch, device, min_run_time))
    b, h = statistics.median(ours), statistics.median(hand)
    return {"bench_ms": b, "hand_ms": h, "ratio": b / h, "bench_runs": ours, "hand_runs": hand}


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; 1 on a busy shared machine)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    p.add_argument("--steps", type=int, default=150, help="1: training steps per repeat and loop (default: 150)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of each comparison (default: 3)")
    p.add_argument("--no-recorder", action="store_true", help="1: resgrad's step without gradient recording")
    p.add_argument("--skip", nargs="+", default=[], choices=["0", "1", "2"], help="leave these comparisons out")
    p.add_argument("--pairs", type=int, default=3, help="0: alternating pairs of whole processes (default: 3)")
    p.add_argument("--epochs", type=int, default=1, help="0: epochs of each process (default: 1)")
    p.add_argument("--arch", default="residual", help="2: the point (default: residual)")
    p.add_argument("--depth", type=int, default=20, help="2: (default: 20)")
    p.add_argument("--width", type=int, default=16, help="2: (default: 16)")
    p.add_argument("--batch-size", type=int, default=32, help="2: (default: 32)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="2: seconds per measurement (default: 1)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    where = f"{a.device} ({torch.get_num_threads()} threads), torch {torch.__version__}"

    if "0" not in a.skip:
        r = compare_end_to_end(a.pairs, a.threads, a.data_dir, a.epochs)
        med = r["median_s"]
        print(f"0. end to end, whole processes, float32, {a.epochs} epoch(s), {a.pairs} alternating pairs, {where}")
        for name, label in (
            ("tutorial", "tutorial's script (DataLoader, ToTensor, batch 64):"),
            ("resgrad", "resgrad train --arch seed-residual (defaults):"),
            ("resgrad_batch_64", "resgrad train ... --batch-size 64:"),
        ):
            runs = ", ".join(f"{v:.1f}" for v in r["seconds"][name])
            print(f"   {label:<52} {med[name]:6.1f} s  (runs: {runs})")
        print(
            f"   ratio tutorial / resgrad: {r['ratio']:.2f}x  (goal: >= 2x; per pair: "
            f"{', '.join(f'{v:.2f}' for v in r['paired'])}); with batch 64: {r['ratio_batch_64']:.2f}x"
        )
    if "1" not in a.skip:
        r = compare_training(a.steps, a.repeats, device, a.data_dir, recorder=not a.no_recorder)
        print(
            f"1. training step, seed-residual, batch {BATCH}, {a.steps} steps x {a.repeats} alternating repeats, "
            f"{where}"
        )
        rec = "no recorder" if a.no_recorder else "recorder every 10 steps"
        labels = ["tutorial loop (DataLoader + ToTensor/Normalize):", f"resgrad step (device tensors, {rec}):"]
        width = max(map(len, labels))
        print(
            f"   {labels[0]:<{width}} {r['tutorial_images_per_s']:7.0f} images/s  "
            f"(repeats: {', '.join(f'{v:.0f}' for v in r['tutorial_runs'])})"
        )
        print(
            f"   {labels[1]:<{width}} {r['resgrad_images_per_s']:7.0f} images/s  "
            f"(repeats: {', '.join(f'{v:.0f}' for v in r['resgrad_runs'])})"
        )
        paired = [o / t for o, t in zip(r["resgrad_runs"], r["tutorial_runs"])]
        print(
            f"   ratio resgrad / tutorial: {r['ratio']:.2f}x  (goal: >= 1.5x; per repeat: "
            f"{', '.join(f'{v:.2f}' for v in paired)})"
        )
        print(
            f"   one-off set-up, not timed above: tutorial MNIST dataset {r['setup_tutorial_s']:.2f} s, "
            f"resgrad load_split {r['setup_resgrad_s']:.2f} s"
        )
    if "2" not in a.skip:
        r = compare_bench(a.arch, a.depth, a.width, a.batch_size, device, a.min_run_time, a.repeats)
        print(
            f"2. resgrad bench vs a hand-written torch.utils.benchmark Timer: "
            f"{a.arch} depth {a.depth} width {a.width} "
            f"batch {a.batch_size} train_step float32, {a.repeats} alternating repeats, {where}"
        )
        print(
            f"   resgrad bench median: {r['bench_ms']:.2f} ms  "
            f"(repeats: {', '.join(f'{v:.2f}' for v in r['bench_runs'])})"
        )
        print(
            f"   hand-written median:  {r['hand_ms']:.2f} ms  "
            f"(repeats: {', '.join(f'{v:.2f}' for v in r['hand_runs'])})"
        )
        paired = [b / h for b, h in zip(r["bench_runs"], r["hand_runs"])]
        print(
            f"   ratio bench / hand: {r['ratio']:.3f}  (goal: within 10 %, i.e. 0.90-1.10; per repeat: "
            f"{', '.join(f'{v:.3f}' for v in paired)})"
        )


if __name__ == "__main__":
    main()
