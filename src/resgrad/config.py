"""Run options, each declared once: a :class:`TrainConfig` field and its metadata.

A field's metadata (:func:`resgrad.options.option`) says everything the rest of resgrad
needs to know about it: its help text and choices, its bounds, whether a sweep can vary
it (``axis``: the plural name of the sweep's list flag and TOML key), whether a report
splits its figures by it (``facet``) and whether ``build_model`` takes it (``model``).
``resgrad train``'s flags, ``resgrad sweep``'s list flags and TOML keys, the defaults,
the report's facets and the model's keyword arguments are all derived from these fields,
so a new option is one field here (and the code that uses it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from resgrad import options
from resgrad.errors import UsageError
from resgrad.models import (
    ACTIVATIONS,
    FIXED_ARCHS,
    INITS,
    NORMS,
    SHORTCUTS,
    available_archs,
    check_depth,
    check_width,
)
from resgrad.options import MAX_SEED, data_dir_option, device_option, option, threads_option

OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "bfloat16")
CUDA_GRAPH_MODES = ("auto", "on", "off")
MAX_RECORD_LOG = 1_000_000  # the log-spaced schedule is built up front


@dataclass
class TrainConfig:
    """Everything that defines a run. Steps count from 0."""

    # model
    arch: str = option(
        "residual",
        "model",
        group="model",
        choices=available_archs,
        axis="archs",
        grid=["plain", "residual"],
        metavar="ARCH",
    )
    depth: int = option(
        20,
        "weighted layers, 6n+2: 8, 14, 20, 32, 44, 56, 110, ... (plain/residual only)",
        group="model",
        axis="depths",
        grid=[8, 14, 20],
        check=check_depth,
        model=True,
        metavar="D",
    )
    width: int = option(
        16,
        "channels of the first stage; stages use w, 2w, 4w (plain/residual only)",
        group="model",
        axis="widths",
        facet=True,
        check=check_width,
        model=True,
        metavar="W",
    )
    norm: str = option(
        "none",
        "normalisation after each conv",
        group="model",
        choices=NORMS,
        axis="norms",
        facet=True,
        model=True,
        metavar="NORM",
    )
    activation: str = option(
        "relu",
        "activation function",
        group="model",
        choices=tuple(ACTIVATIONS),
        axis="activations",
        facet=True,
        model=True,
        metavar="ACT",
    )
    init: str = option(
        "default",
        "weight init; default is PyTorch's",
        group="model",
        choices=INITS,
        axis="inits",
        facet=True,
        model=True,
        metavar="INIT",
    )
    shortcut: str = option(
        "A",
        "A: parameter-free identity/zero-pad shortcut; B: 1x1 projections where the shape changes",
        group="model",
        choices=SHORTCUTS,
        model=True,
    )
    zero_init_residual: bool = option(False, "zero the last layer of every block's branch", group="model", model=True)
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
    device: str = device_option()
    threads: int | None = threads_option()
    data_dir: str | None = data_dir_option()
    dtype: str = option(
        "float32",
        "compute dtype of forward and loss: bfloat16 runs them under torch.autocast on the "
        "run's device (weights and their gradients stay float32; the recorded norms are formed in float64)",
        group="speed",
        choices=DTYPES,
    )
    channels_last: bool | None = option(
        None,
        "model and batches in channels-last memory format; default (auto): on the CPU for nets without batch "
        "norm, where oneDNN's convolutions run faster in it with the same numbers up to float rounding; off for "
        "batch norm (its channels-last CPU kernel rounds more: docs/performance.md) and on CUDA",
        group="speed",
        id_default=False,  # what runs made before this default did: their ids and folders stay
    )
    compile: bool = option(
        False,
        "torch.compile the model (inductor; on the CPU it needs a C++ compiler): the first full-size step "
        "waits for the compilation, tens of seconds per model shape; recorded steps, an epoch's last, "
        "smaller batch and evaluation run eagerly",
        group="speed",
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
        check_value("arch", self.arch)
        config, shape = self, ()
        if self.arch in FIXED_ARCHS:  # these archs fix their own shape: record it, keep ids stable
            depth, width = FIXED_ARCHS[self.arch]
            config = dataclasses.replace(self, depth=depth, width=width, norm="none", activation="relu", shortcut="A")
            shape = ("depth", "width")
        checked = {f.name: check_value(f.name, getattr(config, f.name)) for f in FIELDS.values() if f.name not in shape}
        for name in WEIGHT_FACTORS:  # the optimiser multiplies float32 weights by these: a larger one overflows
            adam = name == "lr" and checked["optimizer"] == "adam"
            top = FLOAT32_MAX * (1 - ADAM_BETA1) if adam else FLOAT32_MAX
            if checked[name] > top:
                why = "adam's first step is lr / (1 - beta1) = 10 x lr, and " if adam else "the largest float32: "
                raise UsageError(
                    f"{options.flag(TrainConfig, name)[2:]} must be at most {top:.4g} ({why}the run's weights are "
                    f"float32 whatever --dtype says), got {checked[name]!r}."
                )
        if self.epochs is not None and self.steps is not None:
            raise UsageError(f"give epochs or steps, not both (got epochs={self.epochs}, steps={self.steps}).")
        return dataclasses.replace(config, **checked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a ``config.json`` holds; fields it lacks (older runs) take what those runs did (``id_default``)."""
        fields = dataclasses.fields(cls)
        unknown = sorted(set(d) - {f.name for f in fields})
        if unknown:
            allowed = ", ".join(sorted(f.name for f in fields))
            raise UsageError(f"unknown config option(s) {', '.join(unknown)}; allowed: {allowed}.")
        older = {f.name: f.metadata["id_default"] for f in fields if f.name not in d and "id_default" in f.metadata}
        return cls(**older, **d)

    def run_id(self) -> str:
        """Readable and stable: ``residual-d56-w16-s0-3f9c1a``.

        The hash covers every field that changes the numbers: the first release's
        fields always, later fields only where they differ from what runs made before
        them did (their ``id_default``: the default they were added with).
        """
        key = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("in_id", True)
            and (f.name in self.ID_FIELDS_V1 or getattr(self, f.name) != f.metadata.get("id_default", f.default))
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:6]
        shape = "" if self.arch in FIXED_ARCHS else f"-d{self.depth}-w{self.width}"
        return f"{self.arch}{shape}-s{self.seed}-{digest}"

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``build_model(self.arch, **kwargs)`` takes: the fields declared ``model=True``."""
        return {name: getattr(self, name) for name, f in FIELDS.items() if f.metadata["model"]}


# ---------------------------------------------------------------- what the declarations give

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
WEIGHT_FACTORS = ("lr", "momentum", "weight_decay")  # the optimiser's factors on the weights and their gradients
ADAM_BETA1 = 0.9  # torch.optim.Adam's default, which train() uses: its first step is lr / (1 - beta1)
FIELDS: dict[str, dataclasses.Field] = options.fields(TrainConfig)


def kinds(name: str) -> tuple[type, ...]:
    """The Python types a field takes (``int | None`` -> ``(int, NoneType)``)."""
    return options.value_types(TrainConfig, name)


def choices(name: str) -> tuple[Any, ...] | None:
    return options.choices(TrainConfig, name)


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


def groups() -> Iterator[tuple[str, list[dataclasses.Field]]]:
    """Fields by ``--help`` section, sections in first-use order."""
    by_group: dict[str, list[dataclasses.Field]] = {}
    for f in FIELDS.values():
        by_group.setdefault(f.metadata["group"], []).append(f)
    yield from by_group.items()


def check_value(name: str, value: Any) -> Any:
    """Check one value of a run option against its declaration; return it (ints become floats where floats go)."""
    return options.check_value(TrainConfig, name, value)
