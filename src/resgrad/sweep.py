"""Depth sweeps: a resumable grid of runs on local processes or Ray.

A sweep folder holds ``sweep.json`` (the grid), ``runs/<run_id>/`` (one run
directory per grid point, as :func:`resgrad.train.save_run` writes it) and
``summary.csv`` (one row per finished run). Workers only train and return their
:class:`~resgrad.train.RunResult`; the driver alone writes files, each run folder
atomically, and rewrites ``summary.csv`` after every finished run. So a killed
sweep loses no finished run, and rerunning it trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import sys
import threading
import time
import traceback
import typing
from collections import Counter
from collections.abc import Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from resgrad import __version__
from resgrad.cudagraph import resolve_cuda_graphs
from resgrad.data import check_mnist, load_split, resolve_data_dir
from resgrad.errors import OutputError, UsageError, check_choice, check_positive
from resgrad.files import OLD_PREFIX, TMP_PREFIX, atomic_dir, prepare_output, write_csv, write_json
from resgrad.train import (
    MAX_SEED, SUMMARY_KEYS, RunResult, TrainConfig, check_run, progress_enabled, read_summary, resolve_device,
    save_run, train,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

try:  # POSIX only; elsewhere two sweeps on one folder are not prevented
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

GRID_OPTIONS = ("arch", "depth", "width", "norm", "activation", "init", "lr", "seed")
# Used for a grid option the spec leaves out (the CLI's defaults too).
DEFAULT_GRID: dict[str, list[Any]] = {
    "arch": ["plain", "residual"],
    "depth": [8, 14, 20],
    "width": [16],
    "norm": ["none"],
    "activation": ["relu"],
    "init": ["default"],
    "lr": [0.01],
    "seed": [0],
}
EXECUTORS = ("local", "ray")
STATUSES = ("complete", "diverged", "failed")
DONE = ("complete", "diverged")  # statuses a rerun skips; failed runs are retried
SUMMARY_COLUMNS = [
    "run_id", *GRID_OPTIONS, "status", "final_test_acc", "final_test_loss", "final_train_loss",
    "steps", "wall_seconds", "images_per_s", "error",
]
# A run whose worker process dies this often is recorded as failed (the Ray executor: max_retries=1 alike).
MAX_WORKER_DEATHS = 2

_FIELD_TYPES = typing.get_type_hints(TrainConfig)
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


# ---------------------------------------------------------------- the grid


def _check_type(name: str, value: Any) -> Any:
    """Check one TrainConfig value read from JSON/TOML against the field's type; ints become floats where floats go."""
    hint = _FIELD_TYPES[name]
    allowed = typing.get_args(hint) or (hint,)
    optional = type(None) in allowed
    if value is None and optional:
        return value
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{name} must be true or false, got {value!r}.")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int subclass
    if int in allowed and is_number and isinstance(value, int):
        return value
    if float in allowed and is_number:
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    kind = "a whole number" if int in allowed else "a number" if float in allowed else "a string"
    raise UsageError(f"{name} must be {kind}{' (or left out)' if optional else ''}, got {value!r}.")


@dataclass
class SweepSpec:
    """A grid of runs: the cross product of ``grid`` with ``fixed`` applied to every point.

    Args:
        grid: option name (from ``GRID_OPTIONS``) -> non-empty list of values; an
            option left out takes its ``DEFAULT_GRID`` list.
        fixed: any other ``TrainConfig`` fields, the same for every run (steps,
            batch_size, train_subset, device, threads, ...).
    """

    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "SweepSpec":
        """Return the spec with every grid option filled in and values type-checked; raise ``UsageError``."""
        unknown = sorted(set(self.grid) - set(GRID_OPTIONS))
        if unknown:
            raise UsageError(f"unknown grid option(s) {', '.join(unknown)}; allowed: {', '.join(GRID_OPTIONS)}.")
        grid: dict[str, list[Any]] = {}
        for name in GRID_OPTIONS:
            values = self.grid.get(name, DEFAULT_GRID[name])
            if not isinstance(values, (list, tuple)):
                raise UsageError(f"grid option {name} must be a list of values, got {values!r}.")
            if not values:
                raise UsageError(f"grid option {name} is an empty list; give at least one value.")
            grid[name] = [_check_type(name, v) for v in values]
            if name == "seed" and not all(0 <= s <= MAX_SEED for s in grid[name]):
                raise UsageError(f"seeds must be whole numbers from 0 to 2**63-1, got {grid[name]}.")
        fixed: dict[str, Any] = {}
        for name, value in self.fixed.items():
            if name in GRID_OPTIONS:
                raise UsageError(f"{name} is a grid option; give it in the grid as a list, not as a fixed option.")
            if name not in _CONFIG_FIELDS:
                allowed = [n for n in _CONFIG_FIELDS if n not in GRID_OPTIONS]
                raise UsageError(f"unknown run option {name!r}; allowed: {', '.join(allowed)}.")
            fixed[name] = _check_type(name, value)
        return SweepSpec(grid, fixed)

    def configs(self) -> list[TrainConfig]:
        """Every grid point as a validated ``TrainConfig`` (points with the same run id once).

        Raises ``UsageError`` on the first bad value, before anything runs.
        """
        spec = self.validate()
        configs: dict[str, TrainConfig] = {}
        for values in itertools.product(*(spec.grid[name] for name in GRID_OPTIONS)):
            config = TrainConfig(**dict(zip(GRID_OPTIONS, values)), **spec.fixed).validate()
            configs.setdefault(config.run_id(), config)  # fixed archs ignore depth/width: one run, not several
        return list(configs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "fixed": dict(self.fixed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepSpec":
        """Read ``{"grid": ..., "fixed": ...}``; other keys (metadata) are ignored."""
        if not isinstance(d, dict) or not isinstance(d.get("grid"), dict) or not isinstance(d.get("fixed", {}), dict):
            raise UsageError("a sweep spec must be a mapping with a 'grid' mapping and an optional 'fixed' mapping.")
        return cls(grid=dict(d["grid"]), fixed=dict(d.get("fixed", {})))


def load_spec(sweep_dir: str | os.PathLike[str]) -> SweepSpec:
    """The spec of an existing sweep folder (its ``sweep.json``)."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise UsageError(f"{sweep_dir} is not a sweep folder: it has no sweep.json.")
    try:
        return SweepSpec.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}).") from None


# ---------------------------------------------------------------- the sweep.toml file

# CLI list flag -> grid option
LIST_FLAGS = {
    "archs": "arch", "depths": "depth", "widths": "width", "norms": "norm",
    "activations": "activation", "inits": "init", "lrs": "lr", "seeds": "seed",
}
RUN_KEYS = (
    "epochs", "steps", "batch_size", "momentum", "weight_decay", "shortcut", "zero_init_residual",
    "eval_every", "record_every", "record_log", "train_subset", "test_subset", "data_dir", "device", "threads",
    "dtype", "channels_last", "cuda_graphs",
)
SWEEP_KEYS = ("out", "executor", "workers", "ray_address")
CONFIG_KEYS = (*LIST_FLAGS, *RUN_KEYS, *SWEEP_KEYS)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sweep TOML file into a flat dict keyed like the CLI flags (``depths``, ``batch_size``, ``out``, ...).

    Keys may use ``-`` or ``_``; a single value for a list key counts as a list of one.
    Raises ``UsageError`` for a missing or malformed file or an unknown key.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read sweep config {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"sweep config {path} is not UTF-8 text (byte {exc.start} cannot be decoded); "
                         "save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"sweep config {path} is not valid TOML: {exc}.") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in CONFIG_KEYS:
            raise UsageError(f"unknown key {key!r} in {path}; allowed: {', '.join(CONFIG_KEYS)}.")
        if isinstance(value, dict):
            raise UsageError(f"key {key!r} in {path} must be a value or a list, not a table.")
        if name in LIST_FLAGS and not isinstance(value, list):
            value = [value]
        if name in RUN_KEYS:
            value = _check_type(name, value)
        elif name in SWEEP_KEYS:
            expected = int if name == "workers" else str
            if isinstance(value, bool) or not isinstance(value, expected):
                kind = "a whole number" if expected is int else "a string"
                raise UsageError(f"key {key!r} in {path} must be {kind}, got {value!r}.")
        out[name] = value
    return out


# ---------------------------------------------------------------- one run, in a worker


@dataclass
class RunFailure:
    """A run that raised: its config and the error, one line."""

    config: TrainConfig
    error: str
    wall_seconds: float | None = None


Outcome = RunResult | RunFailure


def _run_point(config: TrainConfig, progress: bool = False) -> Outcome:
    """Train one grid point; an exception becomes a :class:`RunFailure` (the sweep goes on)."""
    t0 = time.perf_counter()
    try:
        return train(config, progress=progress)
    except Exception as exc:  # any error in one run is that run's result, not the sweep's
        return RunFailure(config, _one_line_error(exc), time.perf_counter() - t0)


def _one_line_error(exc: BaseException, with_location: bool = True) -> str:
    """``Type: message (at file.py:line in function)``: one line, useful even when the message is empty."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__) if with_location else []
    if frames:
        last = frames[-1]
        text += f" (at {'/'.join(Path(last.filename).parts[-2:])}:{last.lineno} in {last.name})"
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:997] + "..."


# In a pool worker: the queue on which it tells the driver each run it starts (set by _init_worker).
_announce: Any = None


def _init_worker(threads: int, parent_pid: int, announce: Any) -> None:
    """Pool worker set-up: torch threads, the start queue, and exit when the driver is gone (e.g. SIGKILLed)."""
    global _announce
    _announce = announce
    torch.set_num_threads(threads)
    # tqdm's default lock holds a multiprocessing semaphore; a killed worker would leave it to the
    # resource tracker, which then warns of "leaked semaphore objects". Workers show no bar anyway.
    tqdm.set_lock(threading.RLock())

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_announced(config: TrainConfig) -> Outcome:
    """:func:`_run_point` in a pool worker, after telling the driver which run this worker now holds."""
    _announce.put(config.run_id())
    return _run_point(config)


# ---------------------------------------------------------------- executors
# Each yields the outcomes of its runs as they finish; the driver records them.


def _run_in_process(configs: list[TrainConfig], step_bar: bool) -> Iterator[Outcome]:
    for config in configs:
        yield _run_point(config, progress=step_bar)


def _run_pool(configs: list[TrainConfig], workers: int, threads: int) -> Iterator[Outcome]:
    """Run ``configs`` on ``workers`` processes; a pool broken by a dying worker is replaced and the sweep goes on.

    The runs that workers held when one died get a second chance after the others, one at a
    time in a pool of one worker (so that a second death is the run's own); then they fail.
    """
    deaths: Counter[str] = Counter()
    todo = list(configs)
    while todo:
        fresh = [c for c in todo if not deaths[c.run_id()]]
        batch, size = (fresh, workers) if fresh else (todo, 1)
        later = [c for c in todo if deaths[c.run_id()]] if fresh else []
        unfinished, held = yield from _pool_pass(batch, size, threads)
        if not unfinished:
            todo = later
            continue
        # Blame the runs a worker held; when none was held (a worker died before taking one), all left unfinished.
        for config in [c for c in unfinished if c.run_id() in held] or unfinished:
            deaths[config.run_id()] += 1
        retry = [c for c in unfinished if deaths[c.run_id()] < MAX_WORKER_DEATHS]
        log.warning(
            "a worker process died (killed, or out of memory?) holding %s; %d unfinished run(s) go on in a new pool",
            ", ".join(sorted(held)) or "no run", len(retry),
        )
        for config in unfinished:
            if deaths[config.run_id()] >= MAX_WORKER_DEATHS:
                error = f"its worker process died {MAX_WORKER_DEATHS} times (killed, or out of memory?)"
                yield RunFailure(config, error)
        todo = retry + later


def _pool_pass(
    configs: list[TrainConfig], workers: int, threads: int
) -> Generator[Outcome, None, tuple[list[TrainConfig], set[str]]]:
    """Run ``configs`` in one process pool, yielding outcomes as runs finish.

    Returns what a dying worker left unfinished (in ``configs`` order; nothing when the
    pool finished) and the ids of the unfinished runs that a worker had started.
    """
    # spawn, not fork: a forked child of a process that has started torch's threads can deadlock.
    spawn = multiprocessing.get_context("spawn")
    announced = spawn.SimpleQueue()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=spawn, initializer=_init_worker, initargs=(threads, os.getpid(), announced)
    )
    futures: dict[Future, TrainConfig] = {}
    pending: set[Future] = set()
    started: set[str] = set()
    finished: set[str] = set()
    try:
        for config in configs:
            try:
                fut = pool.submit(_run_announced, config)
            except BrokenProcessPool:  # a worker died already: what is not submitted stays unfinished
                break
            futures[fut] = config
            pending.add(fut)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            while not announced.empty():  # read as we go, so that the pipe never fills up
                started.add(announced.get())
            for fut in done:
                if isinstance(fut.exception(), BrokenProcessPool):  # a worker died: every unfinished run lands here
                    continue
                finished.add(futures[fut].run_id())
                yield fut.result()
    finally:
        if pending:  # interrupted: stop the workers now rather than wait for their runs
            procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
        pool.shutdown(wait=True)
        announced.close()
    unfinished = [c for c in configs if c.run_id() not in finished]
    return unfinished, started - finished


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray, which is not installed; pip install 'resgrad[ray]'.") from None
    return ray


def _run_ray(configs: list[TrainConfig], workers: int, ray_address: str | None) -> Iterator[Outcome]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    # Results travel back through the object store: the cluster needs no shared filesystem.
    task = ray.remote(max_retries=1, num_cpus=1)(_run_point)  # a worker that dies is retried once
    refs = {task.remote(c): c for c in configs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died twice, or the task could not run
                    # Raised in the driver, not in the run: the traceback's last line says nothing about the run.
                    outcome = RunFailure(refs[ref], _one_line_error(exc, with_location=False))
                yield outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _executor(
    configs: list[TrainConfig], executor: str, workers: int, threads: int, ray_address: str | None, step_bar: bool
) -> Iterator[Outcome]:
    """The outcomes of ``configs`` from the chosen executor; with nothing to run, nothing is started."""
    if not configs:
        return
    if executor == "ray":
        yield from _run_ray(configs, workers, ray_address)
    elif workers == 1:
        yield from _run_in_process(configs, step_bar)
    else:
        yield from _run_pool(configs, workers, threads)


# ---------------------------------------------------------------- the sweep folder


def summary_row(config: TrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """One ``summary.csv`` row from a run's config and its summary.json."""
    row: dict[str, Any] = {"run_id": config.run_id()}
    row.update({name: getattr(config, name) for name in GRID_OPTIONS})
    for name in SUMMARY_COLUMNS:
        row.setdefault(name, summary.get(name))
    return row


def _summary_frame(configs: list[TrainConfig], rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The ``summary.csv`` frame: the rows of the runs finished so far, in grid order."""
    ids = [c.run_id() for c in configs]
    return pd.DataFrame([rows[run_id] for run_id in ids if run_id in rows], columns=SUMMARY_COLUMNS)


def _failure_summary(failure: RunFailure) -> dict[str, Any]:
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    summary.update(
        run_id=failure.config.run_id(), status="failed", error=failure.error, wall_seconds=failure.wall_seconds,
        threads=failure.config.threads, python_version=platform.python_version(),
        torch_version=torch.__version__, resgrad_version=__version__,
    )
    return summary


def _save_failure(failure: RunFailure, run_dir: Path) -> dict[str, Any]:
    """A failed run's folder: config.json and summary.json only."""
    summary = _failure_summary(failure)
    with atomic_dir(run_dir) as tmp:
        write_json(tmp / "config.json", failure.config.to_dict())
        write_json(tmp / "summary.json", summary)
    return summary


def _record(outcome: Outcome, runs_dir: Path) -> dict[str, Any]:
    """Write one finished run's folder and return its ``summary.csv`` row."""
    config = outcome.config
    run_dir = runs_dir / config.run_id()
    if isinstance(outcome, RunResult):
        save_run(outcome, run_dir, force=True)  # a failed, damaged or --force'd run: checked before the sweep began
        return summary_row(config, outcome.summary)
    log.warning("%s failed: %s", config.run_id(), outcome.error)
    return summary_row(config, _save_failure(outcome, run_dir))


def _clean_stale(folder: Path) -> None:
    """Remove what a killed driver left half done: temp files and folders of the atomic writers.

    Only names with resgrad's own prefixes are touched (see :mod:`resgrad.files`).
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        elif entry.name.startswith(OLD_PREFIX) and entry.is_dir() and not entry.is_symlink():
            # Killed between the two renames of atomic_dir: the old folder was whole; put it back.
            pid, _, name = entry.name[len(OLD_PREFIX):].partition("-")
            if not pid.isdigit() or not name:
                continue
            original = folder / name
            if original.exists():
                shutil.rmtree(entry)
            else:
                os.replace(entry, original)


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Make DIR and hold DIR/.lock so that two sweeps never write one folder (the OS drops it if we die)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out_dir, exc) from exc
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fh = open(out_dir / ".lock", "w")
    except OSError as exc:
        raise OutputError(out_dir / ".lock", exc) from exc
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"another sweep is writing to {out_dir}; wait for it or pick another --out.") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_executor(executor: str, workers: int, ray_address: str | None) -> None:
    check_choice("executor", executor, EXECUTORS)
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise UsageError(f"workers must be a whole number >= 1, got {workers!r}.")
    check_positive("workers", workers)
    if ray_address and executor != "ray":
        raise UsageError("a Ray address only applies to --executor ray.")
    if executor == "ray":
        _import_ray()


def _check_out_dir(out_dir: Path) -> None:
    """The sweep folder: new, empty or a sweep folder (files of other names in it are left alone)."""
    prepare_output(out_dir, "sweep")


def _check_replaceable(configs: list[TrainConfig], runs_dir: Path) -> None:
    """The run folders these runs will replace hold nothing resgrad did not write."""
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UsageError(f"{runs_dir} is a file where the sweep keeps its run folders; move it away.")
    for config in configs:
        run_dir = runs_dir / config.run_id()
        if run_dir.exists() or run_dir.is_symlink():
            prepare_output(run_dir, "run", force=True)


def _check_ray_address(address: str, timeout: float = 10.0) -> None:
    """Refuse, within seconds, a Ray address where nothing answers (``ray.init`` would retry for ever)."""
    target = address
    if address == "auto":
        try:  # the lookup ray.init does for "auto"
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # pragma: no cover  (a Ray without it: ray.init reports what it finds)
            return
        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as exc:
            raise UsageError(f"--ray-address auto finds no running Ray cluster ({str(exc).splitlines()[0]}); "
                             "start one with `ray start --head`, or leave --ray-address out.") from None
    host, sep, port = target.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"Ray address {address!r} is not host:port, ray://host:port or auto.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"nothing answers at Ray address {address} ({exc.strerror or exc}); "
                         "start the cluster there, or fix --ray-address.") from None


def _for_workers(configs: list[TrainConfig], threads: int, remote: bool) -> list[TrainConfig]:
    """The configs with the sweep's thread count and, for workers on this machine, an absolute data folder."""
    configs = [dataclasses.replace(c, threads=threads) for c in configs]
    if remote:  # a cluster's workers look for the data on their own machines
        return configs
    data_dir = str(resolve_data_dir(configs[0].data_dir).resolve())
    return [dataclasses.replace(c, data_dir=data_dir) for c in configs]


def _preflight(sample: TrainConfig) -> None:
    """Catch what would fail every run (no or damaged MNIST, no CUDA) as one usage error, before writing anything."""
    resolve_cuda_graphs(sample.cuda_graphs, resolve_device(sample.device))
    load_split(False, sample.data_dir, subset=1)  # downloads MNIST where it is missing and can be
    check_mnist(sample.data_dir, require=True)  # both splits, by MD5 and size, without loading them


def _pending(configs: list[TrainConfig], runs_dir: Path, force: bool, warn: bool = False) -> list[TrainConfig]:
    """The configs to run: all with ``force``, else those without a whole complete or diverged run folder.

    A finished run whose folder is damaged (see :func:`resgrad.train.check_run`) runs again;
    ``warn`` logs it by name.
    """
    if force:
        return list(configs)
    todo = []
    for config in configs:
        run_dir = runs_dir / config.run_id()
        summary = read_summary(run_dir)
        if summary is None or summary.get("status") not in DONE:
            todo.append(config)
        elif problem := check_run(run_dir, summary):
            if warn:
                log.warning("%s is damaged (%s); it runs again", config.run_id(), problem)
            todo.append(config)
    return todo


def _earlier_specs(out_dir: Path, spec: SweepSpec) -> list[SweepSpec]:
    """The grids an earlier sweep ran in ``out_dir`` with points ``spec`` lacks, oldest first (from sweep.json)."""
    path = out_dir / "sweep.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
        found = [SweepSpec.from_dict(d) for d in [*old.get("earlier", []), old]]
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # UsageError is a ValueError
        log.warning("%s cannot be read (%s): runs of earlier grids not in this one are left out of summary.csv",
                    path, exc)
        return []
    ids = {c.run_id() for c in spec.configs()}
    kept: list[SweepSpec] = []
    for earlier in found:
        try:
            new_ids = {c.run_id() for c in earlier.configs()} - ids
        except UsageError:  # a grid that no longer validates has no points to keep
            continue
        if new_ids:
            kept.append(earlier)
            ids |= new_ids
    return kept


def load_earlier(sweep_dir: str | os.PathLike[str]) -> list[SweepSpec]:
    """The earlier grids a sweep folder's ``sweep.json`` lists (the grids it ran before its current one)."""
    try:
        earlier = json.loads((Path(sweep_dir) / "sweep.json").read_text()).get("earlier", [])
        return [SweepSpec.from_dict(d) for d in earlier]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def sweep_points(
    sweep_dir: str | os.PathLike[str], spec: SweepSpec | None = None, earlier: list[SweepSpec] | None = None
) -> list[TrainConfig]:
    """Every run a sweep folder lists: its grid's points, then the finished runs of its earlier grids.

    A sweep rerun with a smaller or different grid keeps the runs it finished before: they
    stay in ``summary.csv`` and in the report.
    """
    sweep_dir = Path(sweep_dir)
    spec = spec if spec is not None else load_spec(sweep_dir)
    earlier = earlier if earlier is not None else load_earlier(sweep_dir)
    points = {c.run_id(): c for c in spec.configs()}
    for other in earlier:
        try:
            configs = other.configs()
        except UsageError:
            continue
        for config in configs:
            run_id = config.run_id()
            if run_id not in points and (read_summary(sweep_dir / "runs" / run_id) or {}).get("status") in DONE:
                points[run_id] = config
    return list(points.values())


def _warn_if_oversubscribed(workers: int, threads: int) -> None:
    """Runs that together want more threads than the machine has cores slow each other down."""
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        log.warning(
            "workers=%d x threads=%d = %d torch threads on %d CPU cores: the runs will slow each other down; "
            "give --workers and --threads so that workers x threads <= %d",
            workers, threads, workers * threads, cores, cores,
        )


def _logging_beside(bar_shown: bool) -> AbstractContextManager[Any]:
    """Route log records through tqdm while a bar is shown, so that they do not break it."""
    return logging_redirect_tqdm() if bar_shown else nullcontext()


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    executor: str = "local",
    workers: int = 1,
    force: bool = False,
    ray_address: str | None = None,
    progress: bool | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Run every grid point not yet done in ``out_dir`` and return the summary (one row per grid point).

    Args:
        spec: the grid; validated completely before anything is written.
        out_dir: the sweep folder (created; an existing sweep folder is resumed).
        executor: ``local`` (``workers`` processes; in this process when 1) or ``ray``.
        workers: parallel runs; each gets ``spec.fixed["threads"]`` torch threads,
            default ``max(1, cpu_count // workers)``.
        force: rerun points already complete or diverged (failed ones always rerun).
        ray_address: a Ray cluster to use; default a local Ray started for the sweep.
        progress: tqdm bars (default: when stderr is a terminal).
        tensorboard: a TensorBoard log folder; each finished run's events go to
            ``tensorboard/<run_id>`` as the driver records it (see :mod:`resgrad.export`).

    Returns:
        The ``summary.csv`` frame: this grid's runs, then the finished runs of earlier grids run
        in ``out_dir`` (``sweep.json`` lists those grids under ``earlier``); ``attrs`` holds
        ``ran``, ``skipped``, ``earlier`` (rows from earlier grids) and ``wall_seconds``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    runs_dir = out_dir / "runs"
    spec = spec.validate()
    configs = spec.configs()
    _check_executor(executor, workers, ray_address)
    _check_out_dir(out_dir)
    if tensorboard is not None:  # refused before anything runs
        from resgrad.export import check_logdir, export_missing, write_run

        check_logdir(tensorboard, [c.run_id() for c in configs], [out_dir])
    threads = spec.fixed.get("threads") or max(1, (os.cpu_count() or 1) // workers)
    remote = executor == "ray" and ray_address is not None
    configs = _for_workers(configs, threads, remote)
    if pending := _pending(configs, runs_dir, force):  # what would fail the sweep fails it now, before any write
        _check_replaceable(pending, runs_dir)
        if executor == "ray" and ray_address:
            _check_ray_address(ray_address)
        if not remote:
            _preflight(configs[0])
    earlier = _earlier_specs(out_dir, spec)

    with _locked(out_dir):
        _clean_stale(out_dir)
        _clean_stale(runs_dir)
        todo = _pending(configs, runs_dir, force, warn=True)
        todo_ids = {c.run_id() for c in todo}
        # This grid's points, then the finished runs of earlier grids: a narrower grid hides none of them.
        listed = sweep_points(out_dir, spec, earlier)
        rows = {  # finished runs kept from before
            c.run_id(): summary_row(c, read_summary(runs_dir / c.run_id()) or {})
            for c in listed if c.run_id() not in todo_ids
        }
        write_json(out_dir / "sweep.json", {**spec.to_dict(), "earlier": [e.to_dict() for e in earlier],
                                            "runs": len(configs), "resgrad_version": __version__})
        write_csv(out_dir / "summary.csv", _summary_frame(listed, rows))
        skipped = len(configs) - len(todo)
        if skipped:
            log.info("%d of %d runs already done in %s; running %d", skipped, len(configs), out_dir, len(todo))
        if tensorboard is not None:  # runs done before this sweep that the log folder lacks
            export_missing([runs_dir / run_id for run_id in rows], tensorboard)
        if todo and not remote:
            _warn_if_oversubscribed(workers, threads)

        show = progress_enabled(progress)
        counts = dict.fromkeys(STATUSES, 0)
        outcomes = _executor(todo, executor, workers, threads, ray_address, step_bar=show)
        with (
            tqdm(total=len(configs), initial=skipped, desc="sweep", unit="run", disable=not show) as bar,
            _logging_beside(show),
            closing(outcomes),  # stops pool workers and Ray tasks when the sweep is interrupted
        ):
            for outcome in outcomes:
                row = _record(outcome, runs_dir)
                if tensorboard is not None and isinstance(outcome, RunResult):
                    write_run(outcome, tensorboard, source=str(runs_dir / row["run_id"]))
                rows[row["run_id"]] = row
                write_csv(out_dir / "summary.csv", _summary_frame(listed, rows))
                counts[row["status"]] += 1
                bar.set_postfix(counts, refresh=False)
                bar.update()

    result = _summary_frame(listed, rows)
    result.attrs.update(ran=len(todo), skipped=skipped, earlier=len(listed) - len(configs),
                        wall_seconds=time.perf_counter() - t0)
    return result


def count_statuses(summary: pd.DataFrame) -> dict[str, int]:
    """``{"complete": n, "diverged": n, "failed": n}`` for a summary frame."""
    counts = summary["status"].value_counts()
    return {s: int(counts.get(s, 0)) for s in STATUSES}
