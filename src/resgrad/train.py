"""One training run on MNIST with gradient recording: ``train(config) -> RunResult``.

A run's result is saved by :func:`resgrad.rundir.save_run` as a run folder (``config.json``,
``metrics.csv``, ``grad_norms.parquet``, ``model.pt``, ``summary.json``), whole or not at
all; :func:`load_model` rebuilds the trained model from such a folder.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import platform
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resgrad import __version__
from resgrad.compute import (
    EVAL_BATCH,
    autocast,
    check_compile,
    check_dtype_speed,
    compile_model,
    evaluate,
    keep_freed_memory,
    resolve_channels_last,
)
from resgrad.config import TrainConfig
from resgrad.cudagraph import GraphedTrainStep, resolve_cuda_graphs
from resgrad.data import endless_batches, load_split
from resgrad.errors import UsageError, check_choice
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model, count_params
from resgrad.options import DEVICES
from resgrad.progress import progress_enabled
from resgrad.rundir import METRIC_COLUMNS, RunResult, first_line
from resgrad.schedules import every, log_spaced

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA is a usage error."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but torch sees no CUDA device here; use --device cpu or auto.")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    recorder: GradientRecorder | None = None,
    step: int = 0,
    epoch: int = 0,
    dtype: str = "float32",
    channels_last: bool = False,
) -> torch.Tensor:
    """One training step as :func:`train` runs it (and ``resgrad bench`` times it); returns the loss, detached, on the device.

    ``bfloat16`` runs forward and loss under :func:`autocast`; ``channels_last`` converts the
    batch (the model is the caller's to convert). :mod:`resgrad.cudagraph` captures this function.
    """
    if recorder is not None:
        recorder.begin_step(step, epoch)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device.type, dtype):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if recorder is not None:
        recorder.end_step()  # reads the gradients before the update
    opt.step()
    return loss.detach()


class StepBuffer:
    """One value per step, kept in fixed-size chunks allocated as the steps arrive.

    Supports what the training loop needs of a tensor: ``buf[step] = value`` for steps in
    order, and ``buf[a:b]`` (a tensor). Unwritten float entries are NaN, ints 0.
    """

    CHUNK = 4096

    def __init__(self, device: torch.device | str, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.chunks: list[torch.Tensor] = []

    def __setitem__(self, step: int, value: torch.Tensor | float | int) -> None:
        i, offset = divmod(step, self.CHUNK)
        while len(self.chunks) <= i:
            fill = math.nan if self.dtype.is_floating_point else 0
            self.chunks.append(torch.full((self.CHUNK,), fill, dtype=self.dtype, device=self.device))
        self.chunks[i][offset] = value

    def __getitem__(self, index: slice) -> torch.Tensor:
        start, stop, _ = index.indices(len(self.chunks) * self.CHUNK)
        parts = [
            c[max(start - i * self.CHUNK, 0) : stop - i * self.CHUNK]
            for i, c in enumerate(self.chunks)
            if i * self.CHUNK < stop and (i + 1) * self.CHUNK > start
        ]
        return torch.cat(parts) if parts else torch.empty(0, dtype=self.dtype, device=self.device)


def make_optimizer(
    config: TrainConfig, params: Iterable[nn.Parameter], capturable: bool = False
) -> torch.optim.Optimizer:
    """The run's optimizer: SGD (momentum, weight decay) or Adam (torch's default betas, weight decay as L2).

    ``capturable`` keeps Adam's step counts on the device, as CUDA-graph capture needs.
    """
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, capturable=capturable)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def initial_model(config: TrainConfig) -> nn.Module:
    """The model a run of ``config`` starts from, on the CPU: its weights are drawn after ``torch.manual_seed(seed)``.

    :func:`train` builds its model with this function, so an experiment that needs a run's
    initial weights (shattered gradients, the straight path from init) rebuilds them exactly.
    """
    torch.manual_seed(config.seed)
    return build_model(config.arch, **config.model_kwargs())


def train(config: TrainConfig, progress: bool | None = None) -> RunResult:
    """Train one model on MNIST, recording gradient norms.

    Args:
        config: the run; validated here.
        progress: show a tqdm bar over steps (default: when stderr is a terminal).

    Returns:
        A :class:`RunResult`; ``status`` is ``complete`` or ``diverged`` (a NaN or
        inf training loss stops the run, keeping what was recorded up to it).
    """
    from tqdm.auto import tqdm

    config = config.validate()
    device = resolve_device(config.device)
    # Compiled code and CUDA graphs do not mix: auto leaves graphs out of a compiled run.
    graphs = resolve_cuda_graphs(config.cuda_graphs, device) and not (config.compile and config.cuda_graphs == "auto")
    if graphs and config.compile:
        raise UsageError("--compile and --cuda-graphs on do not mix; drop one of them.")
    channels_last = resolve_channels_last(config.channels_last, device, config.norm)
    check_compile(config.compile, device)
    check_dtype_speed(config.dtype, device)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for the activations each step allocates again
    if config.threads:
        torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    train_set = load_split(True, config.data_dir, config.train_subset, device)
    test_set = load_split(False, config.data_dir, config.test_subset, device)

    model = initial_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(config, model.parameters(), capturable=graphs)
    compiled = compile_model(model) if config.compile else None
    compile_seconds = None

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = config.steps or (config.epochs or 1) * steps_per_epoch
    eval_every = config.eval_every or steps_per_epoch
    base = log_spaced(total, config.record_log) if config.record_log else every(config.record_every)
    schedule = lambda step: base(step) or step == total - 1  # noqa: E731  (always record the last step)
    # Losses stay on the device; the host reads them in chunks (every step on the CPU, where it is free).
    check_every = 1 if device.type == "cpu" else 50

    losses = StepBuffer(device, torch.float32)  # grows as the run goes: no memory for all steps up front
    epochs = StepBuffer("cpu", torch.int64)
    evals: list[tuple[int, float, float]] = []
    checked, diverged_at = 0, None
    train_seconds, images_seen = 0.0, 0
    batches = endless_batches(len(train_set), config.batch_size, config.seed)
    model.train()
    with (
        GradientRecorder(model, schedule) as rec,
        tqdm(
            total=total, desc=config.run_id(), unit="step", disable=not progress_enabled(progress), leave=False
        ) as bar,
    ):
        graphed = None
        if graphs:  # the capture logic lives apart; the CPU path never enters it
            graphed = GraphedTrainStep(
                functools.partial(
                    train_step, model, opt, recorder=rec, dtype=config.dtype, channels_last=channels_last
                ),
                train_set.images,
                train_set.labels,
                config.batch_size,
                rec,
            )
        t_loop = time.perf_counter()
        for step in range(total):
            # 1. a batch: indices into the device-resident tensors
            epoch, idx = next(batches)
            epochs[step] = epoch
            images_seen += len(idx)
            # 2. forward, backward, gradient norms, update
            if graphed is not None and len(idx) == config.batch_size:
                losses[step] = graphed(idx, step, epoch)  # copied out of the graph's static loss at once
            else:  # on the CPU; under CUDA graphs, an epoch's last, smaller batch
                idx = idx.to(device, non_blocking=True)
                x, y = train_set.images[idx], train_set.labels[idx]
                # Compiled: full-size batches of steps the recorder leaves out (its hooks see eager modules only).
                eager = compiled is None or step == 0 or schedule(step) or len(idx) != config.batch_size
                t_step = time.perf_counter()
                losses[step] = train_step(
                    model if eager else compiled, opt, x, y, rec, step, epoch, config.dtype, channels_last
                )
                if not eager and compile_seconds is None:  # the first compiled step: mostly compilation
                    compile_seconds = time.perf_counter() - t_step
            bar.update()
            # 3. divergence check and evaluation
            do_eval = (step + 1) % eval_every == 0 or step == total - 1
            if (step + 1) % check_every == 0 or do_eval:
                chunk = losses[checked : step + 1].cpu()
                bad = (~torch.isfinite(chunk)).nonzero()
                if len(bad):
                    diverged_at = checked + int(bad[0])
                    break
                checked = step + 1
                bar.set_postfix(loss=f"{chunk[-1].item():.4f}", refresh=False)
            if do_eval:
                train_seconds += time.perf_counter() - t_loop
                test_loss, test_acc = evaluate(model, test_set, EVAL_BATCH[device.type], config.dtype, channels_last)
                evals.append((step, test_loss, test_acc))
                t_loop = time.perf_counter()
        train_seconds += time.perf_counter() - t_loop
        if diverged_at is not None:
            log.warning("%s diverged: non-finite training loss at step %d", config.run_id(), diverged_at)

    last = total - 1 if diverged_at is None else diverged_at
    n_steps = last + 1
    metrics = pd.DataFrame(
        {
            "step": range(n_steps),
            "epoch": epochs[:n_steps].numpy(),
            "train_loss": losses[:n_steps].cpu().double().numpy(),
        }
    )
    eval_frame = pd.DataFrame(evals, columns=["step", "test_loss", "test_acc"])
    metrics = metrics.merge(eval_frame, on="step", how="left")[METRIC_COLUMNS]
    grad_norms = rec.to_frame(until_step=last)

    complete = diverged_at is None
    tail = metrics["train_loss"].iloc[-min(50, n_steps) :]
    summary = {
        "run_id": config.run_id(),
        "status": "complete" if complete else "diverged",
        "final_test_acc": evals[-1][2] if complete else None,
        "final_test_loss": evals[-1][1] if complete else None,
        "final_train_loss": float(tail.mean()) if complete else None,  # mean of the last 50 steps
        "steps": n_steps,
        "epochs": float(n_steps / steps_per_epoch),
        "diverged_at_step": diverged_at,
        "wall_seconds": time.perf_counter() - t_start,
        "train_seconds": train_seconds,
        "images_per_s": images_seen / train_seconds if train_seconds > 0 else None,
        "params": count_params(model),
        "device": device.type,
        "device_name": device_name(device),
        "cuda_graphs": graphs,
        "channels_last": channels_last,
        "compile_seconds": compile_seconds,
        "threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "resgrad_version": __version__,
        "error": None,
    }
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return RunResult(config, summary, metrics, grad_norms, model_state)


def load_model(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """The model of a run directory with its final weights, in eval mode, on ``device``.

    The model is rebuilt from ``config.json`` as :func:`train` builds it and ``model.pt`` is
    read with ``torch.load(..., weights_only=True)`` (tensors only, nothing is unpickled).

    Raises:
        UsageError: the folder has no ``config.json`` or no ``model.pt`` (runs saved before
            resgrad kept weights), or the weights do not fit the config.
    """
    run_dir = Path(run_dir)
    try:
        config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())).validate()
    except (OSError, ValueError, TypeError, AttributeError):  # JSON and UTF-8 errors are ValueErrors
        raise UsageError(f"{run_dir} is not a run folder: it has no readable config.json.") from None
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise UsageError(
            f"run folder {run_dir} has no model.pt (its weights were not saved, as in runs made before resgrad "
            "kept them); rerun it, e.g. with `resgrad sweep ... --force`, to get them."
        )
    model = build_model(config.arch, **config.model_kwargs())
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"{weights} cannot be loaded into the model its config.json describes ({first_line(exc)})."
        ) from None
    return model.to(device).eval()
