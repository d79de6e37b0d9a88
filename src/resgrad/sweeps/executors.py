"""Where a sweep's runs train: in this process, in a pool of local processes, or as Ray tasks.

Each executor yields the outcomes of its runs as they finish (a :class:`~resgrad.rundir.RunResult`,
or a :class:`RunFailure` for a run that raised); the driver (:mod:`resgrad.sweeps.sweep`) alone writes files.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from resgrad.config import TrainConfig
from resgrad.errors import UsageError, check_choice
from resgrad.rundir import RunResult
from resgrad.sweeps.raycluster import assigned_gpu, check_gpus_per_run, gpus_that_fit, import_ray
from resgrad.train import train

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
MAX_WORKERS = 1024  # runs at once: processes on this machine, or CPUs of a local Ray
# A run whose worker process dies this often is recorded as failed (the Ray executor: max_retries=1 alike).
MAX_WORKER_DEATHS = 2


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
    # Ctrl-C in a terminal reaches the whole process group: only the driver acts on it (it stops the
    # workers). A worker dying of it would read as a crash, and the driver would start a new pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
            ", ".join(sorted(held)) or "no run",
            len(retry),
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


def _run_on_ray(config: TrainConfig) -> Outcome:
    """:func:`_run_point` as a Ray task, on the GPU Ray assigned to it (if any)."""
    import ray

    index = assigned_gpu(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    if index is not None and config.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(index)  # "cuda" is the current device: the one Ray gave this run
    return _run_point(config)


def _run_ray(
    configs: list[TrainConfig], workers: int, ray_address: str | None, gpus_per_run: float | None = None
) -> Iterator[Outcome]:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    try:
        gpus = gpus_that_fit(configs, gpus_per_run, float(ray.cluster_resources().get("GPU", 0)))
    except BaseException:
        if started:
            ray.shutdown()
        raise
    # Results travel back through the object store: the cluster needs no shared filesystem. A GPU task
    # runs in a worker process of its own (Ray's default for them), on the GPUs Ray assigned to it.
    task = ray.remote(max_retries=1, num_cpus=1, num_gpus=gpus)(_run_on_ray)  # a dying worker is retried once
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


def run_all(
    configs: list[TrainConfig],
    executor: str,
    workers: int,
    threads: int,
    ray_address: str | None,
    step_bar: bool,
    gpus_per_run: float | None = None,
) -> Iterator[Outcome]:
    """The outcomes of ``configs`` from the chosen executor; with nothing to run, nothing is started."""
    if not configs:
        return
    if executor == "ray":
        yield from _run_ray(configs, workers, ray_address, gpus_per_run)
    elif workers == 1:
        yield from _run_in_process(configs, step_bar)
    else:
        yield from _run_pool(configs, workers, threads)


def check_executor(executor: str, workers: int, ray_address: str | None, gpus_per_run: float | None = None) -> None:
    check_choice("executor", executor, EXECUTORS)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"workers must be a whole number from 1 to {MAX_WORKERS:,}, got {workers!r}.")
    if ray_address is not None and not ray_address.strip():
        raise UsageError(
            "--ray-address is empty; give host:port, ray://host:port or auto, or leave it out to start a local Ray."
        )
    if ray_address and executor != "ray":
        raise UsageError("a Ray address only applies to --executor ray.")
    if gpus_per_run is not None:
        check_gpus_per_run(gpus_per_run)
        if executor != "ray":
            raise UsageError("--gpus-per-run only applies to --executor ray (local runs use the one GPU they see).")
    if executor == "ray":
        import_ray()
