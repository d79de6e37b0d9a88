"""One training run on MNIST with gradient recording: ``train(config) -> RunResult``.

The run directory it saves (:func:`save_run`) holds ``config.json``,
``metrics.csv``, ``grad_norms.parquet``, ``model.pt`` (the final ``state_dict``, read
back by :func:`load_model`) and ``summary.json``; the folder appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import pickle
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from resgrad import __version__
from resgrad.cudagraph import MODES as CUDA_GRAPH_MODES
from resgrad.cudagraph import GraphedTrainStep, resolve_cuda_graphs
from resgrad.data import Split, endless_batches, load_split
from resgrad.errors import UsageError, check_choice, check_finite, check_positive
from resgrad.files import (
    atomic_dir, atomic_write, check_record, file_record, prepare_output, write_csv, write_json, write_parquet,
)
from resgrad.gradients import GradientRecorder, every, log_spaced
from resgrad.models import ACTIVATIONS, FIXED_ARCHS, INITS, NORMS, SHORTCUTS, available_archs, build_model, check_depth, count_params

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16")
# Images per evaluation batch: on a GPU a few large batches, so that evaluating does not dominate a graphed run.
EVAL_BATCH = {"cpu": 1000, "cuda": 5000}
METRIC_COLUMNS = ["step", "epoch", "train_loss", "test_loss", "test_acc"]
MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most 2**64-1; sweeps have always allowed this range
MAX_THREADS = 1024  # torch.set_num_threads overflows past 2**31-1 and crashes well below it
MAX_RECORD_LOG = 1_000_000  # the log-spaced schedule is built up front
_WHOLE_NUMBERS = ("depth", "width", "epochs", "steps", "batch_size", "eval_every", "record_every", "record_log",
                  "seed", "train_subset", "test_subset", "threads")
# The keys of summary.json, in the order train() writes them.
SUMMARY_KEYS = (
    "run_id", "status", "final_test_acc", "final_test_loss", "final_train_loss", "steps", "epochs",
    "diverged_at_step", "wall_seconds", "train_seconds", "images_per_s", "params", "device", "device_name",
    "cuda_graphs", "threads", "python_version", "torch_version", "resgrad_version", "error",
)


@dataclass
class TrainConfig:
    """Everything that defines a run. Steps count from 0."""

    arch: str = "residual"  # a name from resgrad.models.available_archs()
    depth: int = 20  # weighted layers, 6n+2 (plain/residual only)
    width: int = 16  # channels of the first stage (plain/residual only)
    norm: str = "none"  # none | batch
    activation: str = "relu"  # relu | tanh | sigmoid
    init: str = "default"  # default | kaiming | xavier
    shortcut: str = "A"  # A: parameter-free, B: 1x1 projections
    zero_init_residual: bool = False
    epochs: int | None = None  # length of the run: epochs or steps, not both
    steps: int | None = None  # default when neither is given: 1 epoch
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    eval_every: int | None = None  # steps between test evaluations; default once per epoch (and at the end)
    record_every: int = 10  # record gradient norms every k steps (and at the last step)
    record_log: int | None = None  # instead: about this many log-spaced recording steps
    seed: int = 0
    train_subset: int | None = None  # first N training images
    test_subset: int | None = None  # first N test images (default: all 10,000)
    device: str = "auto"  # cpu | cuda | auto
    threads: int | None = None  # torch intra-op threads on the CPU (default: torch's choice)
    data_dir: str | None = None  # folder holding MNIST/raw (default: $RESGRAD_DATA or ./data)
    dtype: str = field(default="float32", metadata={
        "help": "compute dtype of forward and loss: bfloat16 runs them under torch.autocast on the run's device "
                "(weights, their gradients and the recorded norms stay float32)",
        "choices": DTYPES,
    })
    channels_last: bool = field(default=False, metadata={
        "help": "model and batches in channels-last memory format (faster convolutions on recent GPUs)",
    })
    cuda_graphs: str = field(default="auto", metadata={
        "help": "capture the whole training step (forward, loss, backward, gradient norms, SGD update) as CUDA graphs "
                "and replay them, which runs the same kernels as eager mode with far less launch overhead: "
                "auto = on when the run's device is CUDA; on without CUDA is an error. An epoch's last, smaller batch "
                "(when the batch size does not divide the training images) runs eagerly, so a graphed run trains on "
                "the same batches as an eager one",
        "choices": CUDA_GRAPH_MODES,
    })

    # Fields that do not change the numbers a run produces, left out of its id.
    NOT_IN_ID = ("threads", "data_dir", "cuda_graphs")
    # The fields every run id has hashed since the first release. A field added later
    # enters the hash only when it differs from its default, so that adding an option
    # whose default keeps today's behaviour keeps every existing run id (and folder).
    ID_FIELDS_V1 = (
        "arch", "depth", "width", "norm", "activation", "init", "shortcut", "zero_init_residual", "epochs",
        "steps", "batch_size", "lr", "momentum", "weight_decay", "eval_every", "record_every", "record_log",
        "seed", "train_subset", "test_subset", "device",
    )

    def validate(self) -> "TrainConfig":
        """Raise ``UsageError`` on the first bad value; return the config with ignored fields reset."""
        check_choice("arch", self.arch, available_archs())
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("init", self.init, INITS)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("cuda-graphs", self.cuda_graphs, CUDA_GRAPH_MODES)
        if not isinstance(self.channels_last, bool):
            raise UsageError(f"channels-last must be true or false, got {self.channels_last!r}.")
        for name in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise UsageError(f"{name.replace('_', '-')} must be a whole number, got {value!r}.")
        for name in ("lr", "momentum", "weight_decay"):
            check_finite(name.replace("_", "-"), getattr(self, name))
        if self.arch not in FIXED_ARCHS:
            check_depth(self.depth)
            if not isinstance(self.width, int) or self.width < 1:
                raise UsageError(f"width must be a whole number >= 1, got {self.width!r}.")
        if self.epochs is not None and self.steps is not None:
            raise UsageError(f"give epochs or steps, not both (got epochs={self.epochs}, steps={self.steps}).")
        for name in ("epochs", "steps", "eval_every", "record_log", "train_subset", "test_subset", "threads"):
            check_positive(name.replace("_", "-"), getattr(self, name), allow_none=True)
        for name in ("batch_size", "lr", "record_every"):
            check_positive(name.replace("_", "-"), getattr(self, name))
        if self.momentum < 0 or self.weight_decay < 0:
            raise UsageError(f"momentum and weight-decay must be >= 0, got {self.momentum} and {self.weight_decay}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed!r}.")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise UsageError(f"threads must be at most {MAX_THREADS}, got {self.threads}.")
        if self.record_log is not None and self.record_log > MAX_RECORD_LOG:
            raise UsageError(f"record-log must be at most {MAX_RECORD_LOG:,}, got {self.record_log:,}.")
        if self.arch in FIXED_ARCHS:  # these archs fix their own shape: record it, keep ids stable
            depth, width = FIXED_ARCHS[self.arch]
            return dataclasses.replace(self, depth=depth, width=width, norm="none", activation="relu", shortcut="A")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown config option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}.")
        return cls(**d)

    def run_id(self) -> str:
        """Readable and stable: ``residual-d56-w16-s0-3f9c1a``.

        The hash covers every field that changes the numbers: the first release's
        fields always, later fields only where they differ from their defaults.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        key = {
            k: v
            for k, v in self.to_dict().items()
            if k not in self.NOT_IN_ID and (k in self.ID_FIELDS_V1 or v != defaults[k])
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:6]
        shape = "" if self.arch in FIXED_ARCHS else f"-d{self.depth}-w{self.width}"
        return f"{self.arch}{shape}-s{self.seed}-{digest}"


@dataclass
class RunResult:
    """What a run produced: the summary, per-step metrics, gradient norms and the final weights."""

    config: TrainConfig
    summary: dict[str, Any]
    metrics: pd.DataFrame = field(repr=False)
    grad_norms: pd.DataFrame = field(repr=False)
    model_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # final state_dict, on the CPU

    @property
    def status(self) -> str:
        return self.summary["status"]

    # Sweep workers send results back pickled. Tensors would travel through shared memory and
    # passed file descriptors (one per tensor); as one torch.save blob they travel like any bytes.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.model_state is not None:
            buffer = io.BytesIO()
            torch.save(self.model_state, buffer)
            state["model_state"] = buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("model_state"), bytes):
            state["model_state"] = torch.load(io.BytesIO(state["model_state"]), weights_only=True)
        self.__dict__.update(state)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent CUDA is a usage error."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but torch sees no CUDA device here; use --device cpu or auto.")
    return torch.device(name)


def autocast(device_type: str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bfloat16 on ``device_type``, or nothing for float32.

    The cast cache is off: each weight is cast once per forward anyway, and the cache
    is unsafe under CUDA-graph capture (see torch.cuda.make_graphed_callables).
    """
    check_choice("dtype", dtype, DTYPES)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


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


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, dtype: str = "float32", channels_last: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, in the run's dtype and memory format."""
    was_training = model.training
    model.eval()
    device = split.images.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in zip(split.images.split(batch_size), split.labels.split(batch_size)):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device.type, dtype):
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(split)
    return total_loss.item() / n, correct.item() / n


def progress_enabled(progress: bool | None) -> bool:
    """A progress bar shows when asked, or by default when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress


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
    """One SGD step as :func:`train` runs it; returns the loss, detached, still on the device.

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
        parts = [c[max(start - i * self.CHUNK, 0) : stop - i * self.CHUNK]
                 for i, c in enumerate(self.chunks) if i * self.CHUNK < stop and (i + 1) * self.CHUNK > start]
        return torch.cat(parts) if parts else torch.empty(0, dtype=self.dtype, device=self.device)


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
    graphs = resolve_cuda_graphs(config.cuda_graphs, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    train_set = load_split(True, config.data_dir, config.train_subset, device)
    test_set = load_split(False, config.data_dir, config.test_subset, device)

    torch.manual_seed(config.seed)
    model = build_model(
        config.arch, config.depth, config.width, config.norm, config.activation,
        config.init, config.shortcut, config.zero_init_residual,
    ).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

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
    with GradientRecorder(model, schedule) as rec, tqdm(
        total=total, desc=config.run_id(), unit="step", disable=not progress_enabled(progress), leave=False
    ) as bar:
        graphed = None
        if graphs:  # the capture logic lives apart; the CPU path never enters it
            graphed = GraphedTrainStep(
                functools.partial(train_step, model, opt, recorder=rec, dtype=config.dtype,
                                  channels_last=config.channels_last),
                train_set.images, train_set.labels, config.batch_size, rec,
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
                losses[step] = train_step(model, opt, x, y, rec, step, epoch, config.dtype, config.channels_last)
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
                test_loss, test_acc = evaluate(model, test_set, EVAL_BATCH[device.type], config.dtype, config.channels_last)
                evals.append((step, test_loss, test_acc))
                t_loop = time.perf_counter()
        train_seconds += time.perf_counter() - t_loop
        if diverged_at is not None:
            log.warning("%s diverged: non-finite training loss at step %d", config.run_id(), diverged_at)

    last = total - 1 if diverged_at is None else diverged_at
    n_steps = last + 1
    metrics = pd.DataFrame(
        {"step": range(n_steps), "epoch": epochs[:n_steps].numpy(), "train_loss": losses[:n_steps].cpu().double().numpy()}
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
        "threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "resgrad_version": __version__,
        "error": None,
    }
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return RunResult(config, summary, metrics, grad_norms, model_state)


def save_run(result: RunResult, out_dir: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the run directory atomically; an existing run folder is replaced only with ``force``.

    ``summary.json`` is written last and records every other file with its size and SHA-256
    (``"files"``), so that :func:`check_run` can tell a whole run from a damaged one. A folder
    holding anything resgrad did not write is refused (``UsageError``), ``force`` or not.
    """
    out_dir = prepare_output(out_dir, "run", force=force)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "config.json", result.config.to_dict())
        write_csv(tmp / "metrics.csv", result.metrics)
        write_parquet(tmp / "grad_norms.parquet", result.grad_norms)
        if result.model_state is not None:
            atomic_write(tmp / "model.pt", lambda p: torch.save(result.model_state, p))
        files = file_record(tmp, sorted(p.name for p in tmp.iterdir()))
        write_json(tmp / "summary.json", {**result.summary, "files": files})
    return out_dir


def check_run(run_dir: str | os.PathLike[str], summary: dict[str, Any] | None = None) -> str | None:
    """Why a run folder is not whole, in a few words; None when it is.

    With the record of files in ``summary.json``: each file is there with its recorded size
    and SHA-256. Folders saved before the record: the files a run of its status leaves are
    there and parse, and ``metrics.csv`` holds a whole row for every step.
    """
    run_dir = Path(run_dir)
    summary = summary if summary is not None else read_summary(run_dir)
    if summary is None:
        return "summary.json is missing or unreadable"
    if "files" in summary:
        return check_record(run_dir, summary["files"])
    try:
        json.loads((run_dir / "config.json").read_text())
        if summary.get("status") not in ("complete", "diverged"):
            return None
        import pyarrow.parquet as pq

        pq.read_metadata(run_dir / "grad_norms.parquet")
        text = (run_dir / "metrics.csv").read_text()
        rows = pd.read_csv(io.StringIO(text))
    except (OSError, ValueError) as exc:  # JSONDecodeError, pandas' and pyarrow's errors are ValueErrors or OSErrors
        return _first_line(exc)
    if not text.endswith("\n") or list(rows.columns) != METRIC_COLUMNS or len(rows) != summary.get("steps"):
        return f"metrics.csv holds {len(rows)} whole rows for {summary.get('steps')} steps"
    return None


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run directory's summary.json, or None when it is missing or unreadable."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def load_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """Read a run directory written by :func:`save_run` (the summary without its record of files)."""
    run_dir = Path(run_dir)
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("files", None)
    return RunResult(config, summary, pd.read_csv(run_dir / "metrics.csv"), pd.read_parquet(run_dir / "grad_norms.parquet"))


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
    except (OSError, json.JSONDecodeError, TypeError, AttributeError):
        raise UsageError(f"{run_dir} is not a run folder: it has no readable config.json.") from None
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise UsageError(
            f"run folder {run_dir} has no model.pt (its weights were not saved, as in runs made before resgrad "
            "kept them); rerun it, e.g. with `resgrad sweep ... --force`, to get them."
        )
    model = build_model(
        config.arch, config.depth, config.width, config.norm, config.activation,
        config.init, config.shortcut, config.zero_init_residual,
    )
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise UsageError(f"{weights} cannot be loaded into the model its config.json describes ({_first_line(exc)}).") from None
    return model.to(device).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
