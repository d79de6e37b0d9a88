"""Depth sweeps: a resumable grid of runs on local processes or Ray.

A sweep folder (:mod:`resgrad.sweeps.folder`) holds ``sweep.json`` (the grid), ``runs/<run_id>/``
(one run directory per grid point, as :func:`resgrad.rundir.save_run` writes it) and
``summary.csv`` (one row per finished run). Workers only train and return their
:class:`~resgrad.rundir.RunResult`; the driver alone writes files, each run folder
atomically, and rewrites ``summary.csv`` after every finished run. So a killed
sweep loses no finished run, and rerunning it trains only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from contextlib import AbstractContextManager, closing, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from resgrad import __version__
from resgrad.compute import check_compile
from resgrad.config import TrainConfig
from resgrad.cudagraph import resolve_cuda_graphs
from resgrad.data import check_mnist, load_split, resolve_data_dir
from resgrad.errors import UsageError
from resgrad.files import atomic_dir, prepare_output, write_csv, write_json
from resgrad.integrations.tensorboard import check_logdir, export_missing, write_run
from resgrad.progress import Progress
from resgrad.rundir import DONE, STATUSES, SUMMARY_KEYS, RunResult, check_run, read_summary, save_run
from resgrad.sweeps.executors import Outcome, RunFailure, check_executor, run_all
from resgrad.sweeps.folder import SUMMARY_COLUMNS, clean_stale, earlier_specs, locked, sweep_runs
from resgrad.sweeps.grid import GRID_OPTIONS, SweepSpec
from resgrad.sweeps.raycluster import check_ray_address, check_ray_gpus, ray_address_from_env
from resgrad.train import resolve_device

log = logging.getLogger(__name__)

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
        run_id=failure.config.run_id(),
        status="failed",
        error=failure.error,
        wall_seconds=failure.wall_seconds,
        threads=failure.config.threads,
        python_version=platform.python_version(),
        torch_version=torch.__version__,
        resgrad_version=__version__,
    )
    return summary


def _save_failure(failure: RunFailure, run_dir: Path) -> dict[str, Any]:
    """A failed run's folder: config.json and summary.json only."""
    summary = _failure_summary(failure)
    with atomic_dir(run_dir, "run") as tmp:
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


def _for_workers(configs: list[TrainConfig], threads: int, remote: bool) -> list[TrainConfig]:
    """The configs with the sweep's thread count and, for workers on this machine, an absolute data folder."""
    configs = [dataclasses.replace(c, threads=threads) for c in configs]
    if remote:  # a cluster's workers look for the data on their own machines
        return configs
    data_dir = str(resolve_data_dir(configs[0].data_dir).resolve())
    return [dataclasses.replace(c, data_dir=data_dir) for c in configs]


def _preflight(sample: TrainConfig) -> None:
    """Catch what would fail every run (no or damaged MNIST, no CUDA, no compiler) as one usage error, before writing."""
    device = resolve_device(sample.device)
    resolve_cuda_graphs(sample.cuda_graphs, device)
    check_compile(sample.compile, device)
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
        if summary is None and warn and (run_dir / "summary.json").exists():
            log.warning("%s is damaged (summary.json cannot be read); it runs again", config.run_id())
        if summary is None or summary.get("status") not in DONE:
            todo.append(config)
        elif problem := check_run(run_dir, summary):
            if warn:
                log.warning("%s is damaged (%s); it runs again", config.run_id(), problem)
            todo.append(config)
    return todo


def _warn_if_oversubscribed(workers: int, threads: int) -> None:
    """Runs that together want more threads than the machine has cores slow each other down."""
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        log.warning(
            "workers=%d x threads=%d = %d torch threads on %d CPU cores: the runs will slow each other down; "
            "give --workers and --threads so that workers x threads <= %d",
            workers,
            threads,
            workers * threads,
            cores,
            cores,
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
    gpus_per_run: float | None = None,
) -> pd.DataFrame:
    """Run every grid point not yet done in ``out_dir`` and return the summary (one row per grid point).

    Args:
        spec: the grid; validated completely before anything is written.
        out_dir: the sweep folder (created; an existing sweep folder is resumed).
        executor: ``local`` (``workers`` processes; in this process when 1) or ``ray``.
        workers: parallel runs; each gets ``spec.fixed["threads"]`` torch threads,
            default ``max(1, cpu_count // workers)``.
        force: rerun points already complete or diverged (failed ones always rerun).
        ray_address: a Ray cluster to use; default ``$RAY_ADDRESS``, else a local Ray started for the sweep.
        progress: tqdm bars (default: when stderr is a terminal; else one line per finished run with the time
            elapsed and an estimate of what is left); False: nothing.
        tensorboard: a TensorBoard log folder; each finished run's events go to
            ``tensorboard/<run_id>`` as the driver records it (see :mod:`resgrad.integrations.tensorboard`).
        gpus_per_run: Ray only: the GPUs each run asks Ray for (a fraction shares a GPU); default 1 for
            runs on CUDA (``auto``: where the cluster has GPUs), else 0. Ray runs no more at once than
            its GPUs allow, and each run trains on the GPU Ray assigned to it.

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
    ray_address = ray_address_from_env(executor, ray_address)
    check_executor(executor, workers, ray_address, gpus_per_run)
    _check_out_dir(out_dir)
    if tensorboard is not None:  # refused before anything runs
        check_logdir(tensorboard, [c.run_id() for c in configs], [out_dir])
    if executor == "ray" and ray_address:  # a typo is caught even when nothing is left to run
        check_ray_address(ray_address)
    threads = spec.fixed.get("threads") or max(1, (os.cpu_count() or 1) // workers)
    remote = executor == "ray" and ray_address is not None
    configs = _for_workers(configs, threads, remote)
    earlier = earlier_specs(out_dir, spec)
    # This grid's points, then the finished runs of earlier grids: a narrower grid hides none of them.
    listed = sweep_runs(out_dir, spec, earlier)
    kept = _for_workers(listed[len(configs) :], threads, remote) if len(listed) > len(configs) else []
    # What would fail the sweep fails it now, before any write. A damaged run of an earlier grid runs again too.
    if pending := _pending(configs, runs_dir, force) + _pending(kept, runs_dir, False):
        _check_replaceable(pending, runs_dir)
        if executor == "ray":
            check_ray_gpus(pending, gpus_per_run, ray_address)
        if not remote:
            _preflight(configs[0])

    with locked(out_dir):
        clean_stale(out_dir)
        clean_stale(runs_dir)
        todo = _pending(configs, runs_dir, force, warn=True)
        skipped = len(configs) - len(todo)
        todo += _pending(kept, runs_dir, False, warn=True)
        todo_ids = {c.run_id() for c in todo}
        rows = {  # finished runs kept from before
            c.run_id(): summary_row(c, read_summary(runs_dir / c.run_id()) or {})
            for c in listed
            if c.run_id() not in todo_ids
        }
        write_json(
            out_dir / "sweep.json",
            {
                **spec.to_dict(),
                "earlier": [e.to_dict() for e in earlier],
                "runs": len(configs),
                "resgrad_version": __version__,
            },
        )
        write_csv(out_dir / "summary.csv", _summary_frame(listed, rows))
        if skipped:
            log.info("%d of %d runs already done in %s; running %d", skipped, len(configs), out_dir, len(todo))
        if tensorboard is not None:  # runs done before this sweep that the log folder lacks
            export_missing([runs_dir / run_id for run_id in rows], tensorboard)
        if todo and not remote:
            _warn_if_oversubscribed(workers, threads)

        counts = dict.fromkeys(STATUSES, 0)
        with Progress(skipped + len(todo), "sweep", "run", progress if todo else False, initial=skipped) as shown:
            bar = shown.mode == "bar"
            outcomes = run_all(todo, executor, workers, threads, ray_address, step_bar=bar, gpus_per_run=gpus_per_run)
            with _logging_beside(bar), closing(outcomes):  # closing: stops pool workers and Ray tasks on Ctrl-C
                for outcome in outcomes:
                    row = _record(outcome, runs_dir)
                    if tensorboard is not None and isinstance(outcome, RunResult):
                        write_run(outcome, tensorboard, source=str(runs_dir / row["run_id"]))
                    rows[row["run_id"]] = row
                    write_csv(out_dir / "summary.csv", _summary_frame(listed, rows))
                    counts[row["status"]] += 1
                    shown.done(f"{row['run_id']}: {row['status']}", **counts)

    result = _summary_frame(listed, rows)
    result.attrs.update(
        ran=len(todo), skipped=skipped, earlier=len(listed) - len(configs), wall_seconds=time.perf_counter() - t0
    )
    return result


def count_statuses(summary: pd.DataFrame) -> dict[str, int]:
    """``{"complete": n, "diverged": n, "failed": n}`` for a summary frame."""
    counts = summary["status"].value_counts()
    return {s: int(counts.get(s, 0)) for s in STATUSES}
