"""The sweep folder on disk: its grids (``sweep.json``), the runs it holds, and its upkeep.

A sweep folder holds ``sweep.json`` (the grid, and the earlier grids it ran under
``earlier``), ``runs/<run_id>/`` and ``summary.csv``. :func:`sweep_runs` is the one
definition of the runs of a sweep: the grid's points, then the finished runs of its
earlier grids. ``resgrad report``, ``lesion``, ``shatter``, ``landscape`` and ``export``
all read a sweep's runs through it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resgrad.config import TrainConfig
from resgrad.errors import OutputError, UsageError
from resgrad.files import OLD_PREFIX, TMP_PREFIX
from resgrad.rundir import DONE, read_summary
from resgrad.sweeps.grid import GRID_OPTIONS, SweepSpec

try:  # POSIX only; elsewhere two sweeps on one folder are not prevented
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# summary.csv: one row per finished run (fractions for accuracy, as in summary.json).
SUMMARY_COLUMNS = [
    "run_id",
    *GRID_OPTIONS,
    "status",
    "final_test_acc",
    "final_test_loss",
    "final_train_loss",
    "steps",
    "wall_seconds",
    "images_per_s",
    "error",
]


def load_spec(sweep_dir: str | os.PathLike[str]) -> SweepSpec:
    """The spec of an existing sweep folder (its ``sweep.json``)."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise UsageError(f"{sweep_dir} is not a sweep folder: it has no sweep.json.")
    try:
        return SweepSpec.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}).") from None


def earlier_specs(out_dir: Path, spec: SweepSpec) -> list[SweepSpec]:
    """The grids an earlier sweep ran in ``out_dir`` with points ``spec`` lacks, oldest first (from sweep.json)."""
    path = out_dir / "sweep.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
        found = [SweepSpec.from_dict(d) for d in [*old.get("earlier", []), old]]
    except (OSError, ValueError, AttributeError, TypeError) as exc:  # UsageError is a ValueError
        log.warning(
            "%s cannot be read (%s): runs of earlier grids not in this one are left out of summary.csv", path, exc
        )
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


def sweep_runs(
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


def clean_stale(folder: Path) -> None:
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
            pid, _, name = entry.name[len(OLD_PREFIX) :].partition("-")
            if not pid.isdigit() or not name:
                continue
            original = folder / name
            if original.exists():
                shutil.rmtree(entry)
            else:
                os.replace(entry, original)


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
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
