"""Shattered gradients (Balduzzi et al., ICML 2017): how alike are input gradients at nearby inputs?

For each of N test images x, a seeded random direction d (unit L2 norm over the 784
normalised pixels, the same for every net) and each distance t of a grid, the gradient of
the true class's logit with respect to the input is taken at x and at x + t·d. The Pearson
correlation over pixels between g(x) and g(x + t·d), averaged over the images, is 1 for a
smooth function and near 0 when the gradient has become white noise ("shattered").

Nets are in eval mode, so that each point's gradient depends on that point alone: batch
norm then uses its running statistics (mean 0 and variance 1 at initialisation, which
makes it the identity there, up to its eps). Nets at initialisation are built as
``resgrad train`` builds them (``torch.manual_seed(seed)``, then ``build_model``); with
``--sweep`` the complete runs' saved weights are measured too, each beside its own
initialisation. Gradients are computed in float64 by default: a deep plain net's input
gradient falls below float32's range (plain-110 at init: about 1e-45).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from resgrad.config import TrainConfig
from resgrad.data import load_split
from resgrad.errors import UsageError
from resgrad.experiments.saved import output_beside, saved_runs, write_study
from resgrad.files import prepare_output
from resgrad.models import FIXED_ARCHS, INITS, NORMS, available_archs, check_depth, check_width
from resgrad.options import MAX_SEED, checked, data_dir_option, device_option, option, threads_option
from resgrad.progress import Progress
from resgrad.report.shatter import COLUMNS, shatter_figures, unmeasured
from resgrad.train import initial_model, load_model, resolve_device

log = logging.getLogger(__name__)

DISTANCES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Points per forward/backward: a GPU wants large batches; on a CPU small ones stay in cache and run faster.
POINT_BATCH = {"cpu": 64, "cuda": 4096}


def _net_archs() -> tuple[str, ...]:
    return tuple(a for a in available_archs() if a not in FIXED_ARCHS)


def nets_option(default: tuple[Any, ...], help: str, **kw: Any) -> Any:
    return option(default, help, group="the nets at init (each flag takes one or more values)", **kw)


@dataclass
class ShatterConfig:
    """The nets and the measurement of :func:`run_shatter` (each field declared with :func:`resgrad.options.option`)."""

    archs: Sequence[str] = nets_option(("plain", "residual"), "models", each="arch", choices=_net_archs, metavar="ARCH")
    depths: Sequence[int] = nets_option(
        (8, 20, 56), "weighted layers, 6n+2 each", each="depth", check=check_depth, metavar="D"
    )
    widths: Sequence[int] = nets_option(
        (16,), "channels of the first stage", each="width", check=check_width, metavar="W"
    )
    norms: Sequence[str] = nets_option(("none",), "normalisation", each="norm", choices=NORMS, metavar="NORM")
    inits: Sequence[str] = nets_option(
        ("default",),
        "weight init; kaiming is He et al.'s, as in Balduzzi et al.",
        each="init",
        choices=INITS,
        metavar="INIT",
    )
    seeds: Sequence[int] = nets_option(
        (0,), "seeds of the initial weights", each="seed", low=0, high=MAX_SEED, metavar="S"
    )
    sweep: str | None = nets_option(
        None, "also every complete run of this sweep (or run) folder, trained and at init", metavar="DIR"
    )
    images: int = option(32, "the first N test images", group="the measurement", low=1, metavar="N")
    distances: Sequence[float] = option(
        DISTANCES, "distances t along the unit direction", group="the measurement", each="distance", metavar="T"
    )
    figure_distance: float | None = option(
        None,
        "the distance of the correlation-vs-depth figure, one of --distances (default: 1, else the middle one)",
        group="the measurement",
        metavar="T",
    )
    direction_seed: int = option(
        0, "seeds the directions d", group="the measurement", low=0, high=MAX_SEED, metavar="S"
    )
    dtype: str = option("float64", "dtype of the nets and gradients", group="the measurement", choices=tuple(DTYPES))
    batch_size: int | None = option(
        None, "points per forward/backward pass (default: 64 on the CPU, 4096 on CUDA)", group="evaluation", low=1
    )
    device: str = device_option("evaluation")
    data_dir: str | None = data_dir_option("evaluation")
    threads: int | None = threads_option("evaluation")

    def validate(self) -> ShatterConfig:
        """Raise ``UsageError`` on the first bad value."""
        config = checked(self)
        if config.figure_distance is not None and config.figure_distance not in config.distances:
            raise UsageError(
                f"figure distance {config.figure_distance:g} is not one of the distances "
                f"{', '.join(f'{t:g}' for t in config.distances)}."
            )
        return config

    @property
    def at_distance(self) -> float:
        if self.figure_distance is not None:
            return self.figure_distance
        grid = sorted(set(self.distances))
        return 1.0 if 1.0 in grid else grid[len(grid) // 2]


# ---------------------------------------------------------------- the measurement


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along the last dimension, in float64.

    Each vector is first divided by its largest magnitude, so that gradients of any scale
    (1e-45 or 1e30) give the same correlation; a constant vector gives NaN.
    """

    def unit(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        v = v / v.abs().amax(dim=-1, keepdim=True)
        v = v - v.mean(dim=-1, keepdim=True)
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)

    return (unit(a) * unit(b)).sum(dim=-1)


def directions(n: int, seed: int) -> torch.Tensor:
    """``n`` seeded random directions (n, 1, 28, 28), each of unit L2 norm; made on the CPU, so the same everywhere."""
    d = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / torch.linalg.vector_norm(d.flatten(1), dim=1).view(n, 1, 1, 1)


def input_gradients(model: nn.Module, points: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """d(logit of ``labels``)/d(input) at every point, one backward per batch.

    In eval mode the points of a batch do not interact, so the gradient of the sum of the
    selected logits with respect to the batch holds each point's own gradient.
    """
    out = []
    for x, y in zip(points.split(batch_size), labels.split(batch_size)):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
        out.append(g)
    return torch.cat(out)


def correlations(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    d: torch.Tensor,
    distances: list[float],
    batch_size: int,
) -> torch.Tensor:
    """(n_images, n_distances): correlation of the gradient at x with that at x + t·d for each t."""
    model.eval()
    n = len(images)
    ts = torch.tensor([0.0, *distances], dtype=images.dtype, device=images.device)
    points = images[:, None] + ts.view(1, -1, 1, 1, 1) * d[:, None]  # (n, 1 + D, 1, 28, 28)
    grads = input_gradients(model, points.flatten(0, 1), labels.repeat_interleave(len(ts)), batch_size)
    grads = grads.view(n, len(ts), -1)  # (n, 1 + D, 784)
    return pearson(grads[:, :1], grads[:, 1:]).cpu()


@dataclass
class _Net:
    config: TrainConfig  # what the net is: arch, depth, width, norm, ... and the seed of its init
    state: str  # init | trained
    run_dir: Path | None = None

    def build(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        if self.run_dir is not None:
            model = load_model(self.run_dir, device)
        else:
            model = initial_model(self.config)
        return model.to(device=device, dtype=dtype).eval()


def _nets(config: ShatterConfig) -> Iterator[_Net]:
    """The grid's nets at init; with a sweep, each complete run trained and at its own init (each net once)."""
    seen = set()
    grid = [
        TrainConfig(arch=a, depth=d, width=w, norm=n, init=i, seed=s)
        for a in config.archs
        for d in config.depths
        for w in config.widths
        for n in config.norms
        for i in config.inits
        for s in config.seeds
    ]
    nets = [_Net(c, "init") for c in grid]
    if config.sweep is not None:
        runs, _ = saved_runs(config.sweep)
        for run in runs:
            if run.unusable():
                log.warning("shatter: left out %s: %s", run.path.name, run.unusable())
        usable = [r for r in runs if not r.unusable() and not r.config.arch.startswith("seed-")]
        if not usable:
            reasons = "; ".join(f"{r.path.name}: {r.unusable()}" for r in runs if r.unusable()) or "no run folders"
            raise UsageError(
                f"{config.sweep} holds no complete plain/residual run with saved weights (model.pt) ({reasons}); "
                "runs made before resgrad saved weights have none: rerun them."
            )
        for run in usable:
            nets += [_Net(run.config, "init"), _Net(run.config, "trained", run.path)]
    for net in nets:
        c = net.config
        key = (
            c.arch,
            c.depth,
            c.width,
            c.norm,
            c.activation,
            c.init,
            c.shortcut,
            c.zero_init_residual,
            c.seed,
            net.state,
            str(net.run_dir),
        )
        if key not in seen:
            seen.add(key)
            yield net


def run_shatter(config: ShatterConfig, progress: bool | None = None) -> pd.DataFrame:
    """Measure every net; one row per net and distance (columns :data:`COLUMNS`)."""
    config = config.validate()
    nets = list(_nets(config))
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    dtype = DTYPES[config.dtype]
    test = load_split(False, config.data_dir, config.images)
    images, labels = test.images.to(device, dtype), test.labels.to(device)
    d = directions(len(images), config.direction_seed).to(device, dtype)
    rows, left_out = [], []
    with Progress(len(nets), "shatter", "net", progress) as shown:
        for net in nets:
            try:
                model = net.build(device, dtype)
            except UsageError as exc:  # a trained run whose weights do not load is left out by name
                if net.run_dir is None:
                    raise
                left_out.append(f"{net.run_dir.name}: {exc}")
                log.warning("shatter: left out %s", left_out[-1])
                shown.done(f"{net.run_dir.name}, left out")
                continue
            batch_size = config.batch_size or POINT_BATCH.get(device.type, 256)
            r = correlations(model, images, labels, d, config.distances, batch_size).numpy()
            c = net.config
            for j, t in enumerate(config.distances):
                finite = r[:, j][np.isfinite(r[:, j])]
                rows.append(
                    dict(
                        arch=c.arch,
                        depth=c.depth,
                        width=c.width,
                        norm=c.norm,
                        activation=c.activation,
                        init=c.init,
                        seed=c.seed,
                        state=net.state,
                        run_id=net.run_dir.name if net.run_dir else "",
                        distance=t,
                        correlation=finite.mean() if len(finite) else math.nan,
                        correlation_std=finite.std(ddof=1) if len(finite) > 1 else math.nan,
                        images=len(finite),
                    )
                )
            shown.done(f"{c.arch}-d{c.depth}-w{c.width} seed {c.seed}, {net.state}")
    if left_out and len(left_out) == sum(net.run_dir is not None for net in nets):  # --sweep, and no trained net
        raise UsageError(f"no trained run of {config.sweep} could be loaded ({'; '.join(left_out[:3])}).")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs["at_distance"] = config.at_distance
    nets_without = unmeasured(frame)
    if nets_without:
        log.warning(
            "shatter: %d net(s) have no correlation at any distance, their input gradient being constant (e.g. "
            "zero) at every pixel of every image: %s. shatter.csv keeps them (NaN); the figures leave them out.",
            len(nets_without),
            "; ".join(nets_without),
        )
    return frame


# ---------------------------------------------------------------- output


def default_out(sweep: str | os.PathLike[str] | None) -> Path:
    """``SWEEP_DIR/shatter`` with ``--sweep`` (``RUN_DIR-shatter`` beside a run folder), else ``runs/shatter``."""
    if sweep is None:
        return Path("runs") / "shatter"
    return output_beside(sweep, "shatter")


def check_out(out: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output folder that holds anything but an earlier shatter folder."""
    return prepare_output(out, "shatter")


def write_shatter(frame: pd.DataFrame, out: str | os.PathLike[str], at_distance: float | None = None) -> list[Path]:
    """Write ``shatter.csv`` and the figures into ``out``, swapped in whole; returns the paths."""
    out = check_out(out)
    figures = shatter_figures(frame, at_distance if at_distance is not None else frame.attrs.get("at_distance"))
    return write_study(out, "shatter", {"shatter.csv": frame}, figures)
