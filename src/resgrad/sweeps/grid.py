"""The grid of a sweep: which runs it holds, from flags, a TOML file or ``sweep.json``.

A :class:`SweepSpec` is the cross product of the sweep's axes (``archs``, ``depths``,
``seeds``, ...) with one value of every other run option. Axes, TOML keys and defaults
all come from the :class:`~resgrad.config.TrainConfig` field declarations, so a new
option needs nothing here. :class:`SweepOptions` declares the rest of a sweep's flags and
keys (its folder, where its runs train) the same way.
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resgrad import options
from resgrad.config import FIELDS, TrainConfig, axes, check_value, default_grid, grid_options, run_keys
from resgrad.errors import UsageError
from resgrad.options import option
from resgrad.sweeps.raycluster import check_gpus_per_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GRID_OPTIONS = grid_options()  # the TrainConfig fields a sweep varies
DEFAULT_GRID: dict[str, list[Any]] = default_grid()  # for an axis the spec leaves out (the CLI's defaults too)
LIST_FLAGS = axes()  # CLI list flag and TOML key -> grid option (depths -> depth)
RUN_KEYS = run_keys()  # one value for every run
EXECUTORS = ("local", "ray")
MAX_WORKERS = 1024  # runs at once: processes on this machine, or CPUs of a local Ray


def _check_ray_address(address: str) -> None:
    if not address.strip():
        raise UsageError(
            "--ray-address is empty; give host:port, ray://host:port or auto, or leave it out to start a local Ray."
        )


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs, beside what it runs: its folder and where its runs train.

    Declared like run options (:func:`resgrad.options.option`): the same fields are the
    ``resgrad sweep`` flags, the sweep TOML's keys and :func:`~resgrad.sweeps.sweep.run_sweep`'s
    keyword arguments, each checked by its declaration.
    """

    out: str | None = option(
        None, "the sweep folder (created, or resumed when it is one)", group="the sweep", metavar="DIR", in_id=False
    )
    executor: str = option("local", "local processes or Ray tasks", group="the sweep", choices=EXECUTORS)
    workers: int = option(
        1,
        "runs at a time; local: warm worker processes, 1 = in this process; ray: CPUs of a local Ray",
        group="the sweep",
        metavar="N",
        low=1,
        high=MAX_WORKERS,
    )
    ray_address: str | None = option(
        None,
        "a Ray cluster (e.g. auto, ray://host:10001); default: $RAY_ADDRESS, else start a local Ray",
        group="the sweep",
        metavar="ADDR",
        check=_check_ray_address,
    )
    gpus_per_run: float | None = option(
        None,
        "ray: the GPUs each run asks Ray for, so that no more runs share the cluster's GPUs than that allows; "
        "a fraction (0.5) puts several runs on one GPU (default: 1 for runs on CUDA, else 0)",
        group="the sweep",
        metavar="N",
        check=check_gpus_per_run,
    )

    def validate(self) -> SweepOptions:
        """Each field checked by its declaration; a Ray address or GPUs per run only with ``executor="ray"``."""
        checked = options.checked(self)
        if checked.ray_address and checked.executor != "ray":
            raise UsageError("a Ray address only applies to --executor ray.")
        if checked.gpus_per_run is not None and checked.executor != "ray":
            raise UsageError("--gpus-per-run only applies to --executor ray (local runs use the one GPU they see).")
        return checked


SWEEP_KEYS = tuple(options.fields(SweepOptions))  # out, executor, workers, ray_address, gpus_per_run
# Run options whose default changed after sweep folders were written, with the value those runs had
# (channels_last: contiguous, before channels-last became the CPU's default). A sweep.json names
# them always; one that does not was written before the change, and its runs had the old value.
OLD_DEFAULTS = {name: f.metadata["id_default"] for name, f in FIELDS.items() if f.metadata["id_default"] != f.default}
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
        """``{"grid": ..., "fixed": ...}`` as ``sweep.json`` holds it: ``fixed`` names every option in ``OLD_DEFAULTS``."""
        now = {name: FIELDS[name].default for name in OLD_DEFAULTS if name not in self.grid}
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "fixed": {**now, **self.fixed}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        """Read ``{"grid": ..., "fixed": ...}``; other keys (metadata) are ignored.

        An option of ``OLD_DEFAULTS`` that ``fixed`` leaves out takes its old default: such a
        ``sweep.json`` was written before that default changed.
        """
        if not isinstance(d, dict) or not isinstance(d.get("grid"), dict) or not isinstance(d.get("fixed", {}), dict):
            raise UsageError("a sweep spec must be a mapping with a 'grid' mapping and an optional 'fixed' mapping.")
        before = {name: value for name, value in OLD_DEFAULTS.items() if name not in d["grid"]}
        return cls(grid=dict(d["grid"]), fixed={**before, **d.get("fixed", {})})


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
            try:
                value = options.check_value(SweepOptions, name, value)
            except UsageError as exc:
                raise UsageError(f"key {key!r} in {path}: {exc}") from None
        out[name] = value
    return out
