"""Loss landscapes (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018) of trained nets, plain vs residual.

For every complete run with saved weights θ, on a fixed set of training images (the first N):

- **2D**: the loss and accuracy at θ + αδ + βη on a G × G grid over [−S, S]², with δ and η
  random Gaussian directions, filter-normalised (each filter of a direction rescaled to the
  norm of the same filter of θ; biases and batch-norm parameters are not moved). The twins
  of one depth get the same random draws (from ``--direction-seed``, on the same shapes).
- **1D**: the same along δ alone, at twice the grid's resolution (2G − 1 points; where G is
  odd the grid's β = 0 row supplies every other one).
- **init-final**: the straight line from the run's initial state (rebuilt from its seed with
  :func:`resgrad.train.initial_model`, as ``resgrad train`` builds it) to its final one
  (Goodfellow, Vinyals & Saxe, ICLR 2015), 2G − 1 points for t in [0, 1]. Every floating
  entry of the state moves: weights, biases, batch-norm parameters and running statistics.
- **curvature**: λ_max and λ_min of the Hessian of the loss at θ with respect to the weights the
  surface moves (as Li et al.'s code) by Lanczos on Hessian-vector products, and |λ_min / λ_max|
  (Li et al. Sec. 6: near 0, locally convex).

The loss is the mean cross-entropy (no weight decay) with batch norm in eval mode: it uses its
running statistics, so each image's loss is its own and the surface does not depend on the batch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from resgrad.data import Split, load_split
from resgrad.experiments.landscape_numerics import (
    filter_normalise,
    floating_state,
    fold_batch_norm,
    hessian_vector_product,
    lanczos_extremes,
    move_between,
    move_to,
    random_directions,
)
from resgrad.experiments.saved import SavedRun, output_beside, saved_runs, usable_runs, write_study
from resgrad.files import prepare_output
from resgrad.options import MAX_SEED, checked, data_dir_option, device_option, option, threads_option
from resgrad.report.landscape import COLUMNS, CURVATURE_COLUMNS, landscape_figures
from resgrad.train import evaluate, initial_model, load_model, progress_enabled, resolve_device

log = logging.getLogger(__name__)

# Images per pass: on a CPU small batches stay in cache and run faster (measured on a depth-56 net of width 8:
# 50 images per forward pass, 100 per Hessian-vector product); a GPU wants large ones.
EVAL_BATCH = {"cpu": 50, "cuda": 1000}
HESSIAN_BATCH = {"cpu": 100, "cuda": 1000}
# Channels-last convolutions: 10 to 30 % faster for these narrow nets on the CPU (measured); on CUDA not in float32.
CHANNELS_LAST = {"cpu": True}
TRAIN_IMAGES = 60_000
# A Hessian-vector product costs about this many forward passes (measured: 9 to 13); the progress bar counts so.
HVP_PASSES = 10


@dataclass
class LandscapeConfig:
    """What :func:`run_landscape` measures (each field declared with :func:`resgrad.options.option`)."""

    grid: int = option(21, "points per side of the 2D grid (G x G)", group="the landscape", low=3, metavar="G")
    span: float = option(
        1.0, "the grid covers -S..S along both directions", group="the landscape", positive=True, metavar="S"
    )
    direction_seed: int = option(
        0,
        "seeds the random directions (the same for every net of the same shape) and the Lanczos start",
        group="the landscape",
        low=0,
        high=MAX_SEED,
        metavar="S",
    )
    images: int = option(
        1000,
        "the first N training images: the loss, the accuracy and the Hessian",
        group="the landscape",
        low=1,
        high=TRAIN_IMAGES,
        metavar="N",
    )
    hessian_steps: int = option(
        20,
        "Lanczos steps (Hessian-vector products) for lambda_max and lambda_min at most",
        group="the landscape",
        low=2,
        metavar="K",
    )
    batch_size: int | None = option(
        None,
        "images per pass (default: 50 per forward pass and 100 per Hessian-vector product on the CPU, 1000 on CUDA)",
        group="evaluation",
        low=1,
    )
    device: str = device_option("evaluation")
    data_dir: str | None = data_dir_option("evaluation")
    threads: int | None = threads_option("evaluation")

    def validate(self) -> LandscapeConfig:
        """Raise ``UsageError`` on the first bad value."""
        return checked(self)

    @property
    def line_points(self) -> int:
        """Points of the 1D and init-final lines: twice the grid's resolution."""
        return 2 * self.grid - 1

    def passes(self) -> int:
        """Forward passes over the images per run (the progress bar's unit), Hessian-vector products included."""
        shared = self.grid if self.grid % 2 else 0  # the grid's beta = 0 row lies on the 1D line
        return self.grid**2 + self.line_points - shared + self.line_points + 1 + HVP_PASSES * self.hessian_steps


@dataclass
class LandscapeResult:
    frame: pd.DataFrame  # one row per evaluated point, columns COLUMNS
    curvature: pd.DataFrame  # one row per run, columns CURVATURE_COLUMNS
    skipped: list[str] = field(default_factory=list)  # one line per run left out, and why


def _coordinate(span: float, k: int, half: int) -> float:
    """The coordinate k/half of the way out to ``span`` (k from -half to half): the grid's and the lines' points
    are computed alike, so a point both have is the same float."""
    return span * k / half


def surface_rows(
    model: nn.Module,
    data: Split,
    config: LandscapeConfig,
    batch_size: int,
    channels_last: bool = False,
    step: Callable[[], None] = lambda: None,
) -> list[dict[str, object]]:
    """The 2D and 1D rows of one trained model (kind, alpha, beta, loss, accuracy).

    The directions are drawn and filter-normalised on the model's parameters; the points are
    evaluated on a copy with its batch norms folded into the convolutions (the same function,
    one pass fewer per layer), so the model itself is not changed.
    """
    names, params = zip(*model.named_parameters())
    theta = [p.detach() for p in params]
    drawn = [dict(zip(names, filter_normalise(raw, theta))) for raw in random_directions(params, config.direction_seed)]
    folded, scales = fold_batch_norm(model)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    targets = [p for _, p in folded.named_parameters()]
    origin = [p.detach().clone() for p in targets]
    delta, eta = (
        [
            (d[name] * scales[name].view(-1, *[1] * (p.dim() - 1)) if name in scales else d[name]).to(p.dtype)
            if name in d and p.dim() > 1
            else None
            for name, p in folded.named_parameters()
        ]
        for d in drawn
    )
    half = config.grid - 1
    seen: dict[tuple[int, int], tuple[float, float]] = {}

    def at(i: int, j: int) -> tuple[float, float]:
        if (i, j) not in seen:
            a, b = _coordinate(config.span, i, half), _coordinate(config.span, j, half)
            move_to(targets, origin, [delta, eta], [a, b])
            seen[(i, j)] = evaluate(folded, data, batch_size, channels_last=channels_last)
            step()
        return seen[(i, j)]

    rows: list[dict[str, object]] = []
    try:
        for j in range(-half, half + 1, 2):
            for i in range(-half, half + 1, 2):
                loss, acc = at(i, j)
                a, b = _coordinate(config.span, i, half), _coordinate(config.span, j, half)
                rows.append(dict(kind="2d", alpha=a, beta=b, loss=loss, accuracy=acc))
        for i in range(-half, half + 1):
            loss, acc = at(i, 0)
            rows.append(dict(kind="1d", alpha=_coordinate(config.span, i, half), beta=0.0, loss=loss, accuracy=acc))
    finally:
        move_to(targets, origin, [], [])  # a model without batch norm is not copied: put its weights back
    return rows


def path_rows(
    model: nn.Module,
    init: nn.Module,
    data: Split,
    points: int,
    batch_size: int,
    channels_last: bool = False,
    step: Callable[[], None] = lambda: None,
) -> list[dict[str, object]]:
    """The init-final rows: the loss at the point t of the straight line from ``init``'s state to ``model``'s."""
    names, targets = zip(*floating_state(model))
    start = dict(floating_state(init))
    end = [t.detach().clone() for t in targets]
    begin = [start[n].detach().to(t.device, t.dtype) for n, t in zip(names, targets)]
    rows: list[dict[str, object]] = []
    try:
        for k in range(points):
            t = k / (points - 1)
            move_between(targets, begin, end, t)
            loss, acc = evaluate(model, data, batch_size, channels_last=channels_last)
            step()
            rows.append(dict(kind="init-final", alpha=t, beta=math.nan, loss=loss, accuracy=acc))
    finally:
        move_between(targets, begin, end, 1.0)
    return rows


def curvature(
    model: nn.Module, data: Split, config: LandscapeConfig, batch_size: int, step: Callable[[], None] = lambda: None
) -> dict[str, object]:
    """λ_max, λ_min, their residual bounds and |λ_min/λ_max| of the loss's Hessian at ``model``'s weights.

    The Hessian is taken with respect to the parameters the surface moves, the conv and linear
    weights (biases and batch norm held fixed), as in Li et al.'s code.
    """
    model.eval()
    weights = [p for p in model.parameters() if p.dim() > 1]
    n = sum(p.numel() for p in weights)
    hvp = hessian_vector_product(model, weights, data, batch_size)
    found = lanczos_extremes(hvp, n, config.hessian_steps, config.direction_seed, data.images.device, on_step=step)
    ratio = abs(found.lambda_min / found.lambda_max) if found.lambda_max != 0 else math.nan
    return dict(
        lambda_max=found.lambda_max,
        lambda_min=found.lambda_min,
        abs_min_over_max=ratio,
        lambda_max_error=found.max_error,
        lambda_min_error=found.min_error,
        hessian_products=found.steps,
        weights=n,
    )


def run_landscape(
    path: str | os.PathLike[str], config: LandscapeConfig | None = None, progress: bool | None = None
) -> LandscapeResult:
    """Measure the landscape of every complete run with saved weights in a sweep folder, or the one run ``path``.

    Raises:
        UsageError: ``path`` is not a sweep or run folder, or holds no complete run with ``model.pt``.
    """
    config = (config or LandscapeConfig()).validate()
    path = Path(path)
    runs, is_sweep = saved_runs(path)
    usable, skipped = usable_runs(runs, path, is_sweep, "measured")
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    batch_size = config.batch_size or EVAL_BATCH.get(device.type, 1000)
    hessian_batch = config.batch_size or HESSIAN_BATCH.get(device.type, 1000)
    channels_last = CHANNELS_LAST.get(device.type, False)
    data = load_split(True, config.data_dir, config.images, device)
    for line in skipped:
        log.warning("landscape: left out %s", line)
    rows, curvatures = [], []
    per_run = config.passes()
    with tqdm(
        total=per_run * len(usable), desc="landscape", unit="pass", disable=not progress_enabled(progress)
    ) as bar:
        for n, run in enumerate(usable):
            bar.set_postfix_str(run.path.name, refresh=False)
            start = time.perf_counter()
            head, model = _load(run, device, channels_last)
            for row in surface_rows(model, data, config, batch_size, channels_last, bar.update):
                rows.append({**head, **row})
            init = initial_model(run.config)
            for row in path_rows(model, init, data, config.line_points, batch_size, channels_last, bar.update):
                rows.append({**head, **row})
            centre = evaluate(model, data, batch_size, channels_last=channels_last)
            bar.update()
            found = curvature(model, data, config, hessian_batch, lambda: bar.update(HVP_PASSES))
            seconds = time.perf_counter() - start
            curvatures.append(
                {**head, **found, "loss": centre[0], "accuracy": centre[1], "images": len(data), "seconds": seconds}
            )
            bar.update(per_run * (n + 1) - bar.n)  # Lanczos may have stopped early
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return LandscapeResult(frame, pd.DataFrame(curvatures, columns=CURVATURE_COLUMNS), skipped)


def _load(run: SavedRun, device: torch.device, channels_last: bool) -> tuple[dict[str, object], nn.Module]:
    c = run.config
    head = dict(run_id=run.path.name, arch=c.arch, depth=c.depth, width=c.width, norm=c.norm, seed=c.seed)
    model = load_model(run.path, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return head, model


# ---------------------------------------------------------------- output


def default_out(path: str | os.PathLike[str]) -> Path:
    """``SWEEP_DIR/landscape``; for a run folder ``RUN_DIR-landscape`` beside it."""
    return output_beside(path, "landscape")


def check_out(out: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output folder that holds anything but an earlier landscape folder."""
    return prepare_output(out, "landscape")


def write_landscape(result: LandscapeResult, out: str | os.PathLike[str]) -> list[Path]:
    """Write ``landscape.csv``, ``curvature.csv`` and the figures into ``out``, swapped in whole; returns the paths."""
    out = check_out(out)
    tables = {"landscape.csv": result.frame, "curvature.csv": result.curvature}
    return write_study(out, "landscape", tables, landscape_figures(result.frame))
