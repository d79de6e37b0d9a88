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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from resgrad.data import load_split
from resgrad.errors import UsageError, check_choice, check_positive
from resgrad.experiments import arch_colors, arch_legend, arch_style, mean_band, new_figure, png, saved_runs
from resgrad.files import atomic_dir, prepare_output, write_bytes, write_csv
from resgrad.models import INITS, NORMS, available_archs, build_model, check_depth
from resgrad.train import TrainConfig, load_model, resolve_device

log = logging.getLogger(__name__)

DISTANCES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Points per forward/backward: a GPU wants large batches; on a CPU small ones stay in cache and run faster.
POINT_BATCH = {"cpu": 64, "cuda": 4096}
COLUMNS = [
    "arch",
    "depth",
    "width",
    "norm",
    "activation",
    "init",
    "seed",
    "state",
    "run_id",
    "distance",
    "correlation",
    "correlation_std",
    "images",
]
FIGURES = {
    "shatter_correlation_vs_distance": "Gradient correlation vs distance",
    "shatter_correlation_vs_depth": "Gradient correlation vs depth",
}


@dataclass
class ShatterConfig:
    """The nets and the measurement of :func:`run_shatter`."""

    archs: list[str] = field(default_factory=lambda: ["plain", "residual"])
    depths: list[int] = field(default_factory=lambda: [8, 20, 56])
    widths: list[int] = field(default_factory=lambda: [16])
    norms: list[str] = field(default_factory=lambda: ["none"])
    inits: list[str] = field(default_factory=lambda: ["default"])  # kaiming: He et al.'s, as in Balduzzi et al.
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: str | None = None  # also the complete runs of this sweep (or run) folder, trained and at init
    images: int = 32  # the first N test images
    distances: list[float] = field(default_factory=lambda: list(DISTANCES))  # t, in units of ||d|| = 1
    figure_distance: float | None = (
        None  # the distance of the correlation-vs-depth figure (default: 1, else the middle one)
    )
    direction_seed: int = 0  # seeds the directions d (the same for every net)
    device: str = "auto"
    dtype: str = "float64"
    batch_size: int | None = None  # points per forward/backward pass (default: POINT_BATCH for the device)
    data_dir: str | None = None
    threads: int | None = None  # torch threads on the CPU (default: torch's choice)

    def validate(self) -> ShatterConfig:
        for name in ("archs", "depths", "widths", "norms", "inits", "seeds", "distances"):
            if not getattr(self, name):
                raise UsageError(f"{name} is an empty list; give at least one value.")
        for arch in self.archs:
            check_choice("arch", arch, [a for a in available_archs() if not a.startswith("seed-")])
        for depth in self.depths:
            check_depth(depth)
        for width in self.widths:
            check_positive("width", width)
        for norm in self.norms:
            check_choice("norm", norm, NORMS)
        for init in self.inits:
            check_choice("init", init, INITS)
        for seed in (*self.seeds, self.direction_seed):
            if not 0 <= seed < 2**63:
                raise UsageError(f"seeds must be whole numbers from 0 to 2**63-1, got {seed}.")
        bad = [t for t in self.distances if not math.isfinite(t)]
        if bad:
            raise UsageError(f"distances must be finite numbers, got {bad[0]!r}.")
        if self.figure_distance is not None and self.figure_distance not in self.distances:
            raise UsageError(f"figure distance {self.figure_distance} is not one of the distances {self.distances}.")
        check_positive("images", self.images)
        check_positive("batch-size", self.batch_size, allow_none=True)
        check_positive("threads", self.threads, allow_none=True)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        return self

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
            c = self.config
            torch.manual_seed(c.seed)  # exactly as train() builds its model
            model = build_model(
                c.arch, c.depth, c.width, c.norm, c.activation, c.init, c.shortcut, c.zero_init_residual
            )
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
            raise UsageError(
                f"{config.sweep} holds no complete plain/residual run with saved weights (model.pt); "
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
    from tqdm.auto import tqdm

    from resgrad.train import progress_enabled

    config = config.validate()
    nets = list(_nets(config))
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    dtype = DTYPES[config.dtype]
    test = load_split(False, config.data_dir, config.images)
    images, labels = test.images.to(device, dtype), test.labels.to(device)
    d = directions(len(images), config.direction_seed).to(device, dtype)
    rows = []
    for net in tqdm(nets, desc="shatter", unit="net", disable=not progress_enabled(progress)):
        model = net.build(device, dtype)
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
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs["at_distance"] = config.at_distance
    return frame


# ---------------------------------------------------------------- output


def check_out(out: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output folder that holds anything but an earlier shatter folder."""
    return prepare_output(out, "shatter")


def write_shatter(frame: pd.DataFrame, out: str | os.PathLike[str], at_distance: float | None = None) -> list[Path]:
    """Write ``shatter.csv`` and the figures into ``out``, swapped in whole; returns the paths."""
    out = check_out(out)
    figures = shatter_figures(frame, at_distance if at_distance is not None else frame.attrs.get("at_distance"))
    with atomic_dir(out) as tmp:
        write_csv(tmp / "shatter.csv", frame)
        for name, (_, data, _) in figures.items():
            write_bytes(tmp / f"{name}.png", data)
    return [out / "shatter.csv", *(out / f"{name}.png" for name in figures)]


def _panels(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One panel row (or column) per state and per (norm, width, init) combination, labelled."""
    options = ["norm", "width", "init"]
    keys = frame[["state", *options]].drop_duplicates()
    keys = keys.assign(o=keys["state"].map({"init": 0, "trained": 1})).sort_values(["o", *options])
    varied = [o for o in options if keys[o].nunique() > 1]
    out = []
    for k in keys.drop(columns="o").to_dict("records"):
        name = "at init" if k["state"] == "init" else "trained"
        out.append((" · ".join([name, *(f"{o}={k[o]}" for o in varied)]), k))
    return out


def _select(frame: pd.DataFrame, **values: object) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for k, v in values.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def shatter_figures(frame: pd.DataFrame, at_distance: float | None = None) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two shatter figures."""
    import seaborn as sns
    from matplotlib.lines import Line2D

    distances = sorted(frame["distance"].unique())
    at = at_distance if at_distance in distances else distances[len(distances) // 2]
    log_x = distances[0] > 0
    panels = _panels(frame)
    archs = list(dict.fromkeys(frame["arch"]))
    depths = sorted(frame["depth"].unique())
    depth_colors = dict(zip(depths, sns.color_palette("viridis_r", len(depths))))
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        fig, axes = new_figure(len(panels), len(archs), FIGURES["shatter_correlation_vs_distance"])
        for i, (label, key) in enumerate(panels):
            for j, arch in enumerate(archs):
                ax = axes[i, j]
                part = _select(frame, arch=arch, **key)
                for depth, color in depth_colors.items():
                    data = _select(part, depth=depth)
                    if len(data):
                        stats = data.groupby("distance")["correlation"].agg(["mean", "min", "max"])
                        ax.plot(stats.index, stats["mean"], color=color, lw=1.5, **arch_style(arch), markersize=3)
                        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, lw=0)
                ax.set_xscale("log" if log_x else "linear")
                ax.axhline(0, color="0.3", lw=0.6)
                ax.set_title(f"{arch} · {label}", fontsize=9)
                ax.set_xlabel("distance t from x (||d|| = 1)" if i == len(panels) - 1 else "")
                ax.set_ylabel("correlation of ∂logit/∂x" if j == 0 else "")
        axes[0, 0].set_ylim(-0.1, 1.02)
        handles = [Line2D([], [], color=c, lw=1.5, label=str(d)) for d, c in depth_colors.items()]
        fig.legend(handles=handles, title="depth", loc="outside right upper", frameon=False)
        out["shatter_correlation_vs_distance"] = (
            FIGURES["shatter_correlation_vs_distance"],
            png(fig),
            "Pearson correlation over pixels between the input gradient of the true class's logit at a test "
            "image x and at x + t·d (d a random unit direction), mean over images; lines: mean over seeds, "
            "band: min–max over seeds. 1: the gradient does not change; 0: unrelated (shattered). "
            "Cf. Balduzzi et al. (2017), Fig. 1.",
        )

        fig, axes = new_figure(1, len(panels), f"{FIGURES['shatter_correlation_vs_depth']} (t = {at:g})")
        colors = arch_colors(archs)
        for j, (label, key) in enumerate(panels):
            ax = axes[0, j]
            part = _select(frame, distance=at, **key)
            for arch, color in colors.items():
                data = _select(part, arch=arch)
                if len(data):
                    mean_band(ax, data, "depth", "correlation", color, arch)
            ax.axhline(0, color="0.3", lw=0.6)
            ax.set_xticks(sorted(part["depth"].unique()))
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("depth (weighted layers)")
            ax.set_ylabel(f"correlation at t = {at:g}" if j == 0 else "")
        axes[0, 0].set_ylim(-0.1, 1.02)
        arch_legend(fig, colors, "min–max over seeds")
        out["shatter_correlation_vs_depth"] = (
            FIGURES["shatter_correlation_vs_depth"],
            png(fig),
            f"Correlation between the input gradients at x and at x + t·d for t = {at:g}, against depth; "
            "mean over seeds (each a mean over images), band: min–max over seeds.",
        )
    return out
