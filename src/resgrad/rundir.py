"""The run folder: what one run leaves on disk, how it is written whole and read back.

A run folder holds ``config.json``, ``metrics.csv``, ``grad_norms.parquet``,
``model.pt`` (the final ``state_dict``) and ``summary.json``, written last, which
records every other file with its size and SHA-256. :func:`save_run` writes the
folder atomically; :func:`check_run` tells a whole folder from a damaged one.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from resgrad.config import TrainConfig
from resgrad.files import atomic_dir, atomic_write, prepare_output, write_csv, write_json, write_parquet
from resgrad.ownership import check_record, file_record, read_marker

STATUSES = ("complete", "diverged", "failed")  # a run folder's summary.json "status"
DONE = ("complete", "diverged")  # runs that trained: a sweep rerun skips them, failed ones run again
METRIC_COLUMNS = ["step", "epoch", "train_loss", "test_loss", "test_acc"]
# The keys of summary.json, in the order train() writes them.
SUMMARY_KEYS = (
    "run_id",
    "status",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "steps",
    "epochs",
    "diverged_at_step",
    "wall_seconds",
    "train_seconds",
    "images_per_s",
    "params",
    "device",
    "device_name",
    "cuda_graphs",
    "channels_last",
    "compile_seconds",
    "threads",
    "python_version",
    "torch_version",
    "resgrad_version",
    "error",
)


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


def save_run(result: RunResult, out_dir: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the run directory atomically; an existing run folder is replaced only with ``force``.

    ``summary.json`` is written last and records every other file with its size and SHA-256
    (``"files"``); the folder's manifest (``.resgrad.json``) records them all, ``summary.json``
    too, so that :func:`check_run` can tell a whole run from a damaged or edited one. A folder
    holding anything resgrad did not write is refused (``UsageError``), ``force`` or not.
    """
    out_dir = prepare_output(out_dir, "run", force=force)
    with atomic_dir(out_dir, "run") as tmp:
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

    With the folder's manifest (``.resgrad.json``): every file, ``summary.json`` too, is there
    with its recorded size and SHA-256. With the record of files in ``summary.json`` only: each
    file it records. Folders saved before the record: the files a run of its status leaves are
    there and parse, and ``metrics.csv`` holds a whole row for every step.
    """
    run_dir = Path(run_dir)
    marker = read_marker(run_dir)
    if marker.get("kind") == "run" and "files" in marker and (problem := check_record(run_dir, marker["files"])):
        return problem
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
        return first_line(exc)
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
    return RunResult(
        config, summary, pd.read_csv(run_dir / "metrics.csv"), pd.read_parquet(run_dir / "grad_norms.parquet")
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
