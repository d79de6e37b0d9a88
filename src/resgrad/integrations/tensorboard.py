"""TensorBoard export: one TensorBoard run per resgrad run, named by its run id.

``LOGDIR/<run_id>/`` holds one event file with

- ``loss/train`` at every step, ``loss/test`` and ``accuracy/test`` at the evaluation steps;
- one scalar per layer and quantity at the recorded steps: ``weight_grad/<index>_<layer>``,
  ``activation_grad/<index>_<block>`` and any other quantity ``grad_norms`` holds;
- the run's configuration and final metrics for the HPARAMS tab (``hparam/final_test_acc``, ...),

and ``resgrad-run.json`` (the run folder it came from), with resgrad's manifest beside them. Each
run folder is written in a temp folder and swapped in whole (:func:`resgrad.files.atomic_dir`),
so exporting again replaces a run's events instead of adding to them. ``tensorboard`` is an optional dependency
(``pip install 'resgrad[tensorboard]'``); without it every entry point raises ``UsageError``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from resgrad import __version__
from resgrad.errors import UsageError
from resgrad.files import atomic_dir, check_path, check_writable, prepare_output, write_json
from resgrad.records import scalars
from resgrad.rundir import METRIC_COLUMNS, RunResult, check_run, first_line, load_run, read_summary
from resgrad.sweeps.folder import sweep_runs

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

MARKER = "resgrad-run.json"  # where the events came from; the folder's manifest is resgrad's usual .resgrad.json
KIND = "tensorboard"  # the kind of output folder LOGDIR/<run_id> is (see resgrad.files.prepare_output)
FLAG = "--tensorboard"
# Config fields that are no hyperparameters: they change neither the numbers nor the model.
NOT_HPARAMS = ("threads", "data_dir")
# Metric tag in the HPARAMS tab -> summary.json key; written once, at the run's last step.
FINAL_METRICS = {
    "hparam/final_test_acc": "final_test_acc",
    "hparam/final_test_loss": "final_test_loss",
    "hparam/final_train_loss": "final_train_loss",
}
EXPORTED = ("complete", "diverged")


def require_tensorboard() -> type[SummaryWriter]:
    """``torch.utils.tensorboard.SummaryWriter``, or ``UsageError`` saying how to install tensorboard."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it; its own import error is less clear)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(
            "tensorboard is not installed; pip install 'resgrad[tensorboard]' (make setup installs it)."
        ) from None
    return SummaryWriter


# ---------------------------------------------------------------- scalars


def add_grad_scalars(writer: SummaryWriter, grad_norms: pd.DataFrame, step: int | None = None) -> int:
    """Write each row of a ``grad_norms`` frame as one scalar; return how many.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        grad_norms: ``step, layer_index, layer, quantity, norm`` rows (as ``GradientRecorder.to_frame``).
        step: the global step of every scalar; default each row's ``step``.
    """
    rows = grad_norms.sort_values(["step", "quantity", "layer_index"], kind="stable")
    for at, frame in rows.groupby("step", sort=True):
        for tag, value in scalars(frame).items():  # zero, NaN and inf are written as they are
            writer.add_scalar(tag, value, int(at) if step is None else step)
    return len(rows)


def add_metric_scalars(writer: SummaryWriter, metrics: pd.DataFrame) -> None:
    """``loss/train`` at every row of ``metrics.csv``; ``loss/test`` and ``accuracy/test`` where a test ran."""
    for step, loss in zip(metrics["step"], metrics["train_loss"]):
        writer.add_scalar("loss/train", float(loss), int(step))
    tested = metrics[metrics[["test_loss", "test_acc"]].notna().any(axis=1)]
    for step, loss, acc in zip(tested["step"], tested["test_loss"], tested["test_acc"]):
        writer.add_scalar("loss/test", float(loss), int(step))
        writer.add_scalar("accuracy/test", float(acc), int(step))


def run_hparams(result: RunResult) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The HPARAMS entry of a run: config fields (unset ones left out) and status; the final metrics."""
    hparams = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)  # the types the HPARAMS tab takes
        for k, v in result.config.to_dict().items()
        if k not in NOT_HPARAMS and v is not None
    }
    hparams["status"] = result.summary.get("status")
    metrics = {tag: result.summary.get(key) for tag, key in FINAL_METRICS.items()}
    return hparams, metrics


def add_run_hparams(writer: SummaryWriter, result: RunResult) -> None:
    """The run's HPARAMS entry, written into the writer's own run.

    ``SummaryWriter.add_hparams`` would write it into a new sub-run named by the time,
    one more with every call; the same three summaries go into the run itself here.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    hparams, metrics = run_hparams(result)
    last_step = max(int(result.summary.get("steps") or 1) - 1, 0)
    for summary in hparams_summaries(hparams, metrics):  # experiment, session start, session end
        writer.file_writer.add_summary(summary, last_step)
    for tag, value in metrics.items():
        if value is not None:  # a diverged run has no final metrics
            writer.add_scalar(tag, float(value), last_step)


# ---------------------------------------------------------------- one run folder in LOGDIR


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_logdir(logdir: str | os.PathLike[str], run_ids: Iterable[str], sources: Sequence[Path] = ()) -> Path:
    """Refuse a LOGDIR that export could not fill safely, before anything is written.

    LOGDIR must be a folder that can be written, or absent (under a folder that can), not
    inside one of ``sources`` (run folders or a sweep's ``runs/``), and each ``LOGDIR/<run_id>``
    absent, empty or a TensorBoard run that resgrad wrote and nobody added to (see
    :func:`resgrad.files.prepare_output`). Also checks that tensorboard is installed.
    """
    require_tensorboard()
    logdir = check_path(logdir, FLAG, replaced=False)
    if logdir.exists() and not logdir.is_dir():
        raise UsageError(f"--tensorboard {logdir} is a file; give a folder (new, or one that holds TensorBoard runs).")
    resolved = logdir.resolve()
    for source in sources:
        if _inside(resolved, source.resolve()):
            raise UsageError(f"--tensorboard {logdir} is inside {source}; give a folder outside the runs it exports.")
    check_writable(logdir, FLAG)
    for run_id in run_ids:
        prepare_output(logdir / run_id, KIND, flag=FLAG)
    return logdir


def write_run(result: RunResult, logdir: str | os.PathLike[str], source: str | None = None) -> Path:
    """Write one run's events into ``LOGDIR/<run_id>``, replacing an earlier export of it whole.

    Args:
        result: the run (from :func:`resgrad.train.train` or :func:`resgrad.rundir.load_run`).
        logdir: the TensorBoard log folder (``tensorboard --logdir LOGDIR``).
        source: the run folder it was read from, noted in ``resgrad-run.json``.
    """
    SummaryWriter = require_tensorboard()
    run_id = result.config.run_id()
    logdir = check_logdir(logdir, [run_id])
    with atomic_dir(logdir / run_id, KIND) as tmp:
        write_json(tmp / MARKER, {"run_id": run_id, "source": source, "resgrad_version": __version__})
        with _writer_errors_raised() as failed:
            # A deep queue: with the default of 10 events every add_scalar waits for the writer thread.
            with SummaryWriter(log_dir=str(tmp), max_queue=10_000) as writer:
                add_metric_scalars(writer, result.metrics)
                add_grad_scalars(writer, result.grad_norms)
                add_run_hparams(writer, result)
        if failed:
            raise failed[0]
    return logdir / run_id


@contextmanager
def _writer_errors_raised() -> Iterator[list[OSError]]:
    """Catch an ``OSError`` in the event writer's thread (a full disk), to raise it here, not print it there.

    The writer writes from a thread of its own; an error there would print a thread's
    traceback and leave the events half written. The list it yields holds the error.
    """
    failed: list[OSError] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            failed.append(args.exc_value)
        else:
            before(args)

    threading.excepthook = hook
    try:
        yield failed
    except Exception:
        if failed:  # what the writer's thread met first is the cause
            raise failed[0] from None
        raise
    finally:
        threading.excepthook = before


# ---------------------------------------------------------------- run and sweep folders


@dataclass
class Export:
    """What :func:`export_tensorboard` did: the TensorBoard runs written and the runs skipped, with why."""

    logdir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one note per run


def _run_dirs(source: Path) -> tuple[list[Path], list[Path]]:
    """The run folders of a run or sweep folder, and the folders that must not hold LOGDIR."""
    if not source.exists():
        raise UsageError(
            f"{source} does not exist; give a run folder (resgrad train) or a sweep folder (resgrad sweep)."
        )
    if not source.is_dir():
        raise UsageError(f"{source} is a file; give a run folder (resgrad train) or a sweep folder (resgrad sweep).")
    if (source / "sweep.json").is_file():
        runs = source / "runs"
        return [runs / c.run_id() for c in sweep_runs(source)], [source, runs]
    if (source / "config.json").is_file():
        return [source], [source]
    raise UsageError(f"{source} is neither a run folder (config.json, summary.json) nor a sweep folder (sweep.json).")


def _load_finished(run_dir: Path) -> tuple[RunResult | None, str]:
    """The run of a folder when it is complete or diverged, else None and why not."""
    summary = read_summary(run_dir)
    if summary is None:
        return None, "missing" if not run_dir.exists() else "no readable summary.json (unfinished?)"
    status = summary.get("status")
    if status not in EXPORTED:
        return None, f"{status}" + (f": {summary['error']}" if summary.get("error") else "")
    if problem := check_run(run_dir, summary):  # a file missing, cut short, or unlike its recorded SHA-256
        return None, f"damaged ({problem})"
    try:
        result = load_run(run_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # unreadable CSV/parquet/JSON, unknown config keys
        return None, f"damaged ({type(exc).__name__}: {first_line(exc)})"
    metrics = result.metrics
    if list(metrics.columns) != METRIC_COLUMNS or not all(pd.api.types.is_numeric_dtype(t) for t in metrics.dtypes):
        return None, "damaged (metrics.csv does not hold numbers under its columns " + ", ".join(METRIC_COLUMNS) + ")"
    if not {"step", "layer_index", "layer", "quantity", "norm"} <= set(result.grad_norms.columns):
        return None, "damaged (grad_norms.parquet lacks its columns)"
    return result, ""


def export_tensorboard(source: str | os.PathLike[str], logdir: str | os.PathLike[str]) -> Export:
    """Write every finished run of a run or sweep folder to ``LOGDIR/<run_id>``.

    Failed, unfinished and missing runs are skipped with a note. Raises ``UsageError``
    for a bad ``source`` or ``logdir`` (before anything is written) and when no run is finished.
    """
    source = Path(source)
    run_dirs, protected = _run_dirs(source)
    logdir = check_logdir(logdir, [], protected)
    done = Export(logdir)
    finished = []
    for run_dir in run_dirs:
        result, why = _load_finished(run_dir)
        if result is None:
            done.skipped.append(f"{run_dir.name}: {why}")
        else:
            finished.append((run_dir, result))
    if not finished:
        raise UsageError(f"{source} holds no finished run to export ({'; '.join(done.skipped)}).")
    check_logdir(logdir, [result.config.run_id() for _, result in finished])  # refuse before writing any
    for run_dir, result in finished:
        done.written.append(write_run(result, logdir, source=str(run_dir)))
    return done


def export_missing(run_dirs: Iterable[Path], logdir: str | os.PathLike[str]) -> list[Path]:
    """Export the finished runs among ``run_dirs`` that ``logdir`` does not hold yet (a resumed sweep)."""
    written = []
    for run_dir in run_dirs:
        if (Path(logdir) / run_dir.name).exists():
            continue
        result, why = _load_finished(run_dir)
        if result is not None:
            written.append(write_run(result, logdir, source=str(run_dir)))
        elif why.startswith("damaged"):
            log.warning("%s is %s: not written to %s", run_dir.name, why, logdir)
    return written
