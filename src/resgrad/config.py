"""Run options, each declared once: a :class:`TrainConfig` field and its metadata.

A field's metadata says everything the rest of resgrad needs to know about it: its
help text and choices, its bounds, whether a sweep can vary it (``axis``: the plural
name of the sweep's list flag and TOML key) and whether a report splits its figures
by it (``facet``). ``resgrad train``'s flags, ``resgrad sweep``'s list flags and TOML
keys, the defaults and the report's facets are all derived from these fields, so a
new option is one field here (and the code that uses it).

This module imports neither torch nor anything that does: the run-folder readers
and the report load configs without paying for torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from resgrad.errors import UsageError

NORMS = ("none", "batch")
ACTIVATION_NAMES = ("relu", "tanh", "sigmoid")
INITS = ("default", "kaiming", "xavier")
SHORTCUTS = ("A", "B")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16")
CUDA_GRAPH_MODES = ("auto", "on", "off")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes at most 2**64-1; sweeps have always allowed this range
MAX_THREADS = 1024  # torch.set_num_threads overflows past 2**31-1 and crashes well below it
MAX_RECORD_LOG = 1_000_000  # the log-spaced schedule is built up front


def _archs() -> tuple[str, ...]:
    from resgrad.models import available_archs  # late: the registry lives with the models (torch)

    return available_archs()


def valid_depth(depth: object) -> bool:
    return isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8 and (depth - 2) % 6 == 0


def check_depth(depth: object) -> int:
    """Return n (blocks per stage) for a depth 6n+2, or raise naming the nearest valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise UsageError(f"depth must be a whole number of the form 6n+2 (8, 14, 20, ...), got {depth!r}.")
    if valid_depth(depth):
        return (depth - 2) // 6
    below = 2 + 6 * ((depth - 2) // 6)
    hint = "the smallest valid depth is 8" if below < 8 else f"the nearest valid depths are {below} and {below + 6}"
    raise UsageError(f"depth {depth} is not of the form 6n+2 with n >= 1; {hint}.")


def option(
    default: Any,
    help: str,
    *,
    group: str = "run",
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    axis: str | None = None,
    grid: list[Any] | None = None,
    facet: bool = False,
    in_id: bool = True,
    metavar: str | None = None,
    check: Callable[[Any], object] | None = None,
) -> Any:
    """Declare one run option (a ``dataclasses.field`` whose metadata the CLI, sweep and report read).

    Args:
        default: the run's default.
        help: one line for ``--help``; the default is appended.
        group: the ``--help`` section (model, optimiser, length, recording, data and machine).
        choices: allowed values, or a callable returning them (for the arch registry).
        low, high: inclusive bounds of a number; ``positive``: > 0.
        axis: the sweep's plural list flag / TOML key (``depths``); None: one value for every run.
        grid: the sweep's default list for an axis (default: ``[default]``).
        facet: reports draw one panel per value when a sweep varies it.
        in_id: False for fields that do not change a run's numbers (threads, paths).
        metavar: the flag's placeholder in ``--help``.
        check: an extra check of a set value (raises ``UsageError``).
    """
    meta = dict(
        help=help,
        group=group,
        choices=choices,
        low=low,
        high=high,
        positive=positive,
        axis=axis,
        grid=grid,
        facet=facet,
        in_id=in_id,
        metavar=metavar,
        check=check,
    )
    return dataclasses.field(default=default, metadata=meta)


def _check_width(width: object) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise UsageError(f"width must be a whole number >= 1, got {width!r}.")


@dataclass
class TrainConfig:
    """Everything that defines a run. Steps count from 0."""

    # model
    arch: str = option(
        "residual", "model", group="model", choices=_archs, axis="archs", grid=["plain", "residual"], metavar="ARCH"
    )
    depth: int = option(
        20,
        "weighted layers, 6n+2: 8, 14, 20, 32, 44, 56, 110, ... (plain/residual only)",
        group="model",
        axis="depths",
        grid=[8, 14, 20],
        check=check_depth,
        metavar="D",
    )
    width: int = option(
        16,
        "channels of the first stage; stages use w, 2w, 4w (plain/residual only)",
        group="model",
        axis="widths",
        facet=True,
        check=_check_width,
        metavar="W",
    )
    norm: str = option(
        "none", "normalisation after each conv", group="model", choices=NORMS, axis="norms", facet=True, metavar="NORM"
    )
    activation: str = option(
        "relu",
        "activation function",
        group="model",
        choices=ACTIVATION_NAMES,
        axis="activations",
        facet=True,
        metavar="ACT",
    )
    init: str = option(
        "default",
        "weight init; default is PyTorch's",
        group="model",
        choices=INITS,
        axis="inits",
        facet=True,
        metavar="INIT",
    )
    shortcut: str = option(
        "A",
        "A: parameter-free identity/zero-pad shortcut; B: 1x1 projections where the shape changes",
        group="model",
        choices=SHORTCUTS,
    )
    zero_init_residual: bool = option(False, "zero the last layer of every block's branch", group="model")
    # length and optimiser
    epochs: int | None = option(
        None, "train for this many epochs (default: 1 epoch)", group="length and optimiser", positive=True
    )
    steps: int | None = option(None, "train for this many steps instead", group="length and optimiser", positive=True)
    batch_size: int = option(128, "images per step", group="length and optimiser", positive=True)
    optimizer: str = option(
        "sgd",
        "sgd (with --momentum, --weight-decay) or adam (torch's default betas, --weight-decay as L2)",
        group="length and optimiser",
        choices=OPTIMIZERS,
        axis="optimizers",
        facet=True,
        metavar="OPT",
    )
    lr: float = option(
        0.01, "learning rate", group="length and optimiser", positive=True, axis="lrs", facet=True, metavar="LR"
    )
    momentum: float = option(0.5, "SGD momentum", group="length and optimiser", low=0)
    weight_decay: float = option(0.0, "weight decay", group="length and optimiser", low=0)
    # recording and evaluation
    eval_every: int | None = option(
        None,
        "steps between test evaluations (default: once per epoch, and at the end)",
        group="recording and evaluation",
        positive=True,
    )
    record_every: int = option(
        10,
        "record gradient norms every K steps, and at the last",
        group="recording and evaluation",
        positive=True,
        metavar="K",
    )
    record_log: int | None = option(
        None,
        "record at about N log-spaced steps instead of every K",
        group="recording and evaluation",
        positive=True,
        high=MAX_RECORD_LOG,
        metavar="N",
    )
    seed: int = option(
        0, "seeds the weights and the batch order", group="model", low=0, high=MAX_SEED, axis="seeds", metavar="S"
    )
    # data and machine
    train_subset: int | None = option(
        None, "train on the first N of the 60,000 training images", group="data and machine", positive=True, metavar="N"
    )
    test_subset: int | None = option(
        None,
        "test on the first N test images (default: all 10,000)",
        group="data and machine",
        positive=True,
        metavar="N",
    )
    device: str = option("auto", "where to train: auto = CUDA if present", group="data and machine", choices=DEVICES)
    threads: int | None = option(
        None,
        "torch threads on the CPU (default: torch's choice)",
        group="data and machine",
        positive=True,
        high=MAX_THREADS,
        in_id=False,
    )
    data_dir: str | None = option(
        None,
        "folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)",
        group="data and machine",
        in_id=False,
        metavar="DIR",
    )
    dtype: str = option(
        "float32",
        "compute dtype of forward and loss: bfloat16 runs them under torch.autocast on the "
        "run's device (weights, their gradients and the recorded norms stay float32)",
        group="speed",
        choices=DTYPES,
    )
    channels_last: bool = option(
        False, "model and batches in channels-last memory format (faster convolutions on recent GPUs)", group="speed"
    )
    cuda_graphs: str = option(
        "auto",
        "capture the whole training step (forward, loss, backward, gradient norms, optimizer update) as CUDA "
        "graphs and replay them: the same kernels as eager mode with far less launch overhead; auto = on when the "
        "run's device is CUDA, on without CUDA is an error. An epoch's last, smaller batch (when the batch size does "
        "not divide the training images) runs eagerly, so a graphed run trains on the same batches as an eager one",
        group="speed",
        choices=CUDA_GRAPH_MODES,
        in_id=False,
    )

    # The fields every run id has hashed since the first release. A field added later
    # enters the hash only when it differs from its default, so that adding an option
    # whose default keeps today's behaviour keeps every existing run id (and folder).
    ID_FIELDS_V1 = (
        "arch",
        "depth",
        "width",
        "norm",
        "activation",
        "init",
        "shortcut",
        "zero_init_residual",
        "epochs",
        "steps",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "eval_every",
        "record_every",
        "record_log",
        "seed",
        "train_subset",
        "test_subset",
        "device",
    )

    def validate(self) -> TrainConfig:
        """Raise ``UsageError`` on the first bad value; return the config with ignored fields reset."""
        from resgrad.models import FIXED_ARCHS  # late: the registry lives with the models (torch)

        check_value("arch", self.arch)
        config, shape = self, ()
        if self.arch in FIXED_ARCHS:  # these archs fix their own shape: record it, keep ids stable
            depth, width = FIXED_ARCHS[self.arch]
            config = dataclasses.replace(self, depth=depth, width=width, norm="none", activation="relu", shortcut="A")
            shape = ("depth", "width")
        checked = {f.name: check_value(f.name, getattr(config, f.name)) for f in FIELDS.values() if f.name not in shape}
        if self.epochs is not None and self.steps is not None:
            raise UsageError(f"give epochs or steps, not both (got epochs={self.epochs}, steps={self.steps}).")
        return dataclasses.replace(config, **checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a ``config.json`` holds; fields it lacks (older runs) take their defaults."""
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
        from resgrad.models import FIXED_ARCHS

        key = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("in_id", True) and (f.name in self.ID_FIELDS_V1 or getattr(self, f.name) != f.default)
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:6]
        shape = "" if self.arch in FIXED_ARCHS else f"-d{self.depth}-w{self.width}"
        return f"{self.arch}{shape}-s{self.seed}-{digest}"


# ---------------------------------------------------------------- what the declarations give

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def kinds(name: str) -> tuple[type, ...]:
    """The Python types a field takes (``int | None`` -> ``(int, NoneType)``)."""
    hint = _TYPES[name]
    return typing.get_args(hint) or (hint,)


def choices(name: str) -> tuple[Any, ...] | None:
    c = FIELDS[name].metadata["choices"]
    return c() if callable(c) else c


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def axes() -> dict[str, str]:
    """Sweep axes: the plural list flag / TOML key -> field (``depths`` -> ``depth``), in field order."""
    return {f.metadata["axis"]: f.name for f in FIELDS.values() if f.metadata["axis"]}


def grid_options() -> tuple[str, ...]:
    """The fields a sweep can vary, in field order."""
    return tuple(axes().values())


def default_grid() -> dict[str, list[Any]]:
    """The list each axis takes when a sweep leaves it out."""
    return {f.name: list(f.metadata["grid"] or [f.default]) for f in FIELDS.values() if f.metadata["axis"]}


def run_keys() -> tuple[str, ...]:
    """Fields a sweep applies to every run (one value each)."""
    return tuple(n for n, f in FIELDS.items() if not f.metadata["axis"])


def facet_options() -> tuple[str, ...]:
    """Options a report splits its panels by when a sweep varies them."""
    return tuple(n for n, f in FIELDS.items() if f.metadata["facet"])


def not_in_id() -> tuple[str, ...]:
    return tuple(n for n, f in FIELDS.items() if not f.metadata["in_id"])


def groups() -> Iterator[tuple[str, list[dataclasses.Field]]]:
    """Fields by ``--help`` section, sections in first-use order."""
    by_group: dict[str, list[dataclasses.Field]] = {}
    for f in FIELDS.values():
        by_group.setdefault(f.metadata["group"], []).append(f)
    yield from by_group.items()


def _range_text(name: str) -> str:
    """``a whole number from 0 to 2**63-1``, ``a finite number > 0``, ..."""
    meta = FIELDS[name].metadata
    kind = "a whole number" if int in kinds(name) else "a finite number"
    low, high = meta["low"], meta["high"]
    top = "2**63-1" if high == MAX_SEED else f"{high:,}" if high is not None else None
    if low is not None and top:
        return f"{kind} from {low:g} to {top}"
    bounds = [
        b
        for b in ("> 0" if meta["positive"] else f">= {low:g}" if low is not None else "", f"<= {top}" if top else "")
        if b
    ]
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


def check_value(name: str, value: Any) -> Any:
    """Check one value of a field against its declaration; return it (ints become floats where floats go).

    The one check of a run option, whichever way the value came (flag, TOML, JSON, Python).
    """
    f = FIELDS[name]
    meta = f.metadata
    what = name.replace("_", "-")
    allowed = kinds(name)
    if value is None:
        if type(None) in allowed:
            return value
    elif bool in allowed:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{what} must be true or false, got {value!r}.")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if int in allowed and not (is_number and isinstance(value, int)) or float in allowed and not is_number:
        kind = "a whole number" if int in allowed else "a number"
        raise UsageError(f"{what} must be {kind}, got {value!r}.")
    if str in allowed and not isinstance(value, str):
        raise UsageError(f"{what} must be a string, got {value!r}.")
    if value is None:
        raise UsageError(f"{what} must be given, got None.")
    if is_number:
        low, high = meta["low"], meta["high"]
        if not math.isfinite(value):
            raise UsageError(f"{what} must be a finite number, got {value!r}.")
        if (
            (meta["positive"] and value <= 0)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise UsageError(f"{what} must be {_range_text(name)}, got {value!r}.")
        if float in allowed:
            value = float(value)
    allowed_values = choices(name)
    if allowed_values is not None and value not in allowed_values:
        raise UsageError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed_values))}.")
    if meta["check"] is not None:
        meta["check"](value)
    return value
