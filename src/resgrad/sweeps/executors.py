"""Where a sweep's runs train: in this process, in a pool of local processes, or as Ray tasks.

Each executor yields the outcomes of its runs as they finish (a :class:`~resgrad.rundir.RunResult`,
or a :class:`RunFailure` for a run that raised); the driver (:mod:`resgrad.sweeps.sweep`) alone writes files.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from resgrad.config import TrainConfig
from resgrad.rundir import RunResult
from resgrad.sweeps.grid import SweepOptions
from resgrad.sweeps.raycluster import assigned_gpu, gpus_that_fit, import_ray
from resgrad.train import train

log = logging.getLogger(__name__)

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


def _serve(conn: Connection, threads: int, parent_pid: int) -> None:
    """A pool worker: train the runs the driver sends, one at a time, and send back each outcome; None ends it.

    The worker is warm: torch is imported once, and MNIST read once (``resgrad.data`` keeps it),
    for all the runs it serves. A run that raises or diverges is that run's outcome; the worker goes on.
    """
    # Ctrl-C in a terminal reaches the whole process group: only the driver acts on it (it stops the
    # workers). A worker dying of it would read as a crash, and the driver would start a new one.
    # (The driver started this process with SIGINT ignored already: see _sigint_ignored.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    # tqdm's default lock holds a multiprocessing semaphore; a killed worker would leave it to the
    # resource tracker, which then warns of "leaked semaphore objects". Workers show no bar anyway.
    tqdm.set_lock(threading.RLock())

    def watch() -> None:  # exit when the driver is gone (e.g. SIGKILLed)
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            config = conn.recv()
        except EOFError:  # the driver is gone
            return
        if config is None:
            gc.freeze()  # the worker ends: no last collection of torch's objects, which the driver waits for (0.5 s)
            return
        outcome = _run_point(config)
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001  (an outcome that cannot be sent is the run's failure)
            conn.send(RunFailure(config, f"its result could not be sent back: {_one_line_error(exc, False)}"))


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT meanwhile (in the main thread), so that a process started now ignores it from its first line.

    Python keeps a SIGINT disposition its parent set; a worker still importing torch would
    otherwise die of a Ctrl-C with a traceback before it could ignore it itself.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class _Worker:
    """A spawned process serving runs over its own pipe, and the run it holds (None when idle)."""

    def __init__(self, context: Any, threads: int) -> None:
        self.conn, child = context.Pipe()
        # spawn, not fork: a forked child of a process that has started torch's threads can deadlock.
        self.process = context.Process(target=_serve, args=(child, threads, os.getpid()), name="resgrad-worker")
        with _sigint_ignored():
            self.process.start()
        child.close()
        self.held: TrainConfig | None = None

    def give(self, config: TrainConfig) -> None:
        self.held = config
        with contextlib.suppress(OSError):  # a worker that died meanwhile: its sentinel tells, and the run is its
            self.conn.send(config)

    def stop(self, now: bool) -> None:
        """Let the worker end after its run (``now``: terminate it), then reap it."""
        if now:
            self.process.terminate()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.process.join(timeout=None if now else 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


# ---------------------------------------------------------------- executors
# Each yields the outcomes of its runs as they finish; the driver records them.


def _run_in_process(configs: list[TrainConfig], step_bar: bool) -> Iterator[Outcome]:
    for config in configs:
        yield _run_point(config, progress=step_bar)


def _run_pool(configs: list[TrainConfig], workers: int, threads: int) -> Iterator[Outcome]:
    """Run ``configs`` on up to ``workers`` warm processes, each serving one run at a time; yield outcomes as they end.

    A worker that dies (killed, out of memory) takes only the run it held: the driver starts
    a new worker in its place. That run gets a second chance after the others, alone (so that
    a second death is the run's own, not memory that other runs took); then it fails.
    """
    context = multiprocessing.get_context("spawn")
    fresh, again = deque(configs), deque[TrainConfig]()
    deaths: Counter[str] = Counter()
    pool: list[_Worker] = []
    interrupted = True
    try:
        while fresh or again or any(w.held for w in pool):
            busy = sum(w.held is not None for w in pool)
            if fresh or (again and not busy):  # hand out runs: fresh ones on every worker, a retried one alone
                want = min(workers, busy + len(fresh)) if fresh else 1  # also in place of a worker that died
                while len(pool) < want:
                    pool.append(_Worker(context, threads))
                for worker in pool:
                    if worker.held is None and (fresh or (again and not busy)):
                        worker.give(fresh.popleft() if fresh else again.popleft())
                        busy += 1
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool]))
            for worker in list(pool):
                outcome = None
                if worker.conn in ready:
                    with contextlib.suppress(EOFError, OSError):  # nothing to read: the worker died
                        outcome = worker.conn.recv()
                if outcome is not None:
                    worker.held = None
                    yield outcome
                elif worker.conn in ready or worker.process.sentinel in ready:
                    pool.remove(worker)
                    worker.stop(now=True)
                    yield from _worker_died(worker.held, deaths, again, len(fresh) + len(again))
        interrupted = False
    finally:  # interrupted (Ctrl-C, or the consumer stopped): stop the workers now rather than wait for their runs
        for worker in pool:
            worker.stop(now=interrupted)


def _worker_died(
    held: TrainConfig | None, deaths: Counter[str], again: deque[TrainConfig], waiting: int
) -> Iterator[Outcome]:
    """Log a worker's death; the run it held goes to ``again``, or fails after its second death."""
    if held is not None:
        deaths[held.run_id()] += 1
    failed = held is not None and deaths[held.run_id()] >= MAX_WORKER_DEATHS
    log.warning(
        "a worker process died (killed, or out of memory?) holding %s; %d unfinished run(s) go on, a new worker"
        " in its place",
        held.run_id() if held is not None else "no run",
        waiting + (held is not None and not failed),
    )
    if failed:
        yield RunFailure(held, f"its worker process died {MAX_WORKER_DEATHS} times (killed, or out of memory?)")
    elif held is not None:
        again.append(held)


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
    """Check a sweep's executor options (:class:`~resgrad.sweeps.grid.SweepOptions`) and that Ray is there for ``ray``."""
    SweepOptions(executor=executor, workers=workers, ray_address=ray_address, gpus_per_run=gpus_per_run).validate()
    if executor == "ray":
        import_ray()
