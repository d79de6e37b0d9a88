"""The grid of a sweep: which runs it holds, from flags, a TOML file or ``sweep.json``.

A :class:`SweepSpec` is the cross product of the sweep's axes (``archs``, ``depths``,
``seeds``, ...) with one value of every other run option. Axes, TOML keys and defaults
all come from the :class:`~resgrad.config.TrainConfig` field declarations, so a new
option needs nothing here. Imports no torch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resgrad.config import TrainConfig, axes, check_value, default_grid, grid_options, run_keys
from resgrad.errors import UsageError
from resgrad.rundir import DONE, read_summary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

GRID_OPTIONS = grid_options()  # the TrainConfig fields a sweep varies
DEFAULT_GRID: dict[str, list[Any]] = default_grid()  # for an axis the spec leaves out (the CLI's defaults too)
LIST_FLAGS = axes()  # CLI list flag and TOML key -> grid option (depths -> depth)
RUN_KEYS = run_keys()  # one value for every run
SWEEP_KEYS = ("out", "executor", "workers", "ray_address")
CONFIG_KEYS = (*LIST_FLAGS, *RUN_KEYS, *SWEEP_KEYS)


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

    def validate(self) -> SweepSpec:
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
            grid[name] = [check_value(name, v) for v in values]
        fixed: dict[str, Any] = {}
        for name, value in self.fixed.items():
            if name in GRID_OPTIONS:
                raise UsageError(f"{name} is a grid option; give it in the grid as a list, not as a fixed option.")
            if name not in RUN_KEYS:
                raise UsageError(f"unknown run option {name!r}; allowed: {', '.join(RUN_KEYS)}.")
            fixed[name] = check_value(name, value)
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
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
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
        raise UsageError(
            f"sweep config {path} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8."
        ) from None
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
            value = check_value(name, value)
        elif name in SWEEP_KEYS:
            expected = int if name == "workers" else str
            if isinstance(value, bool) or not isinstance(value, expected):
                kind = "a whole number" if expected is int else "a string"
                raise UsageError(f"key {key!r} in {path} must be {kind}, got {value!r}.")
        out[name] = value
    return out


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
