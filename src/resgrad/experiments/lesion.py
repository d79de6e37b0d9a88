"""Block lesions (Veit, Wilber & Belongie, NeurIPS 2016): delete blocks of a trained net at test time.

Deleting a block replaces it by its shortcut: the identity, or where the block changes
the shape, the option A (subsample + zero-pad) or B (1x1 projection) shortcut it holds.
The operation is the same for both twins; the residual net loses its branch and keeps
its skip path, the plain net loses the only path through that block.

:func:`run_lesion` measures, for every complete run with saved weights, the test accuracy
of the intact net, with each single block deleted, and with k = 2..K random
non-downsampling blocks deleted (N seeded draws per k; twins of one depth get the same
sets). :func:`write_lesion` writes ``lesion.csv`` and the figures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from resgrad.compute import evaluate
from resgrad.data import Split, load_split
from resgrad.errors import UsageError
from resgrad.experiments.saved import output_beside, saved_runs, usable_runs, write_study
from resgrad.files import prepare_output
from resgrad.models import Block, blocks
from resgrad.options import MAX_SEED, checked, data_dir_option, device_option, option, threads_option
from resgrad.progress import Progress
from resgrad.report.lesion import COLUMNS, lesion_figures
from resgrad.train import load_model, resolve_device

log = logging.getLogger(__name__)

# Test images per forward pass: a GPU wants large batches; on a CPU small ones stay in cache and run faster.
EVAL_BATCH = {"cpu": 100, "cuda": 4000}
# ---------------------------------------------------------------- deleting blocks


class DeletedBlock(nn.Module):
    """Stands in for a deleted block: only its shortcut runs (identity, or option A/B where the shape changes)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.shortcut(x)


def is_downsampling(block: Block) -> bool:
    """A block whose shortcut is not the identity (it changes the resolution or the channels)."""
    return not isinstance(block.shortcut, nn.Identity)


@contextmanager
def blocks_deleted(model: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Within the ``with`` block, the blocks named (as in :func:`resgrad.models.blocks`) are deleted.

    The model is changed in place and restored on exit, also on an exception.
    """
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(modules.get(name), Block):
            raise UsageError(f"{name!r} is not a block of this model; blocks: {', '.join(blocks(model))}.")
    swapped: list[tuple[nn.Module, str, Block]] = []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            block = modules[name]
            setattr(parent, child, DeletedBlock(block))  # same slot in the parent, so the order is kept
            swapped.append((parent, child, block))
        yield model
    finally:
        for parent, child, block in reversed(swapped):
            setattr(parent, child, block)


# ---------------------------------------------------------------- the study


@dataclass
class LesionConfig:
    """What :func:`run_lesion` measures (each field declared with :func:`resgrad.options.option`)."""

    max_deleted: int = option(
        10,
        "random sets of up to K blocks, capped at the non-downsampling blocks there are",
        group="the study",
        low=1,
        metavar="K",
    )
    draws: int = option(5, "random sets per size", group="the study", low=1, metavar="N")
    test_subset: int | None = option(
        None, "the first N test images (default: each run's own)", group="the study", low=1, metavar="N"
    )
    seed: int = option(0, "seeds the random sets", group="the study", low=0, high=MAX_SEED)
    batch_size: int | None = option(
        None, "test images per forward pass (default: 100 on the CPU, 4000 on CUDA)", group="evaluation", low=1
    )
    device: str = device_option("evaluation")
    data_dir: str | None = data_dir_option("evaluation")
    threads: int | None = threads_option("evaluation")

    def validate(self) -> LesionConfig:
        """Raise ``UsageError`` on the first bad value."""
        return checked(self)


@dataclass
class LesionResult:
    frame: pd.DataFrame  # one row per evaluation, columns COLUMNS
    skipped: list[str] = field(default_factory=list)  # one line per run left out, and why


def lesion_model(model: nn.Module, test: Split, config: LesionConfig) -> list[dict[str, object]]:
    """The lesion rows of one model (without the run's columns): intact, single deletions, random sets."""
    model.eval()
    batch_size = config.batch_size or EVAL_BATCH.get(test.images.device.type, 1000)
    names = blocks(model)
    modules = dict(model.named_modules())
    down = {n: is_downsampling(modules[n]) for n in names}
    cache: dict[tuple[str, ...], float] = {}

    def acc(deleted: tuple[str, ...]) -> float:
        if deleted not in cache:
            with blocks_deleted(model, deleted):
                cache[deleted] = evaluate(model, test, batch_size)[1]
        return cache[deleted]

    rows: list[dict[str, object]] = [
        dict(kind="intact", n_deleted=0, draw=None, block="", block_index=None, downsampling=None, test_acc=acc(()))
    ]
    for i, name in enumerate(names):
        rows.append(
            dict(
                kind="single",
                n_deleted=1,
                draw=None,
                block=name,
                block_index=i,
                downsampling=down[name],
                test_acc=acc((name,)),
            )
        )
    pool = [i for i, n in enumerate(names) if not down[n]]
    rng = np.random.default_rng(config.seed)  # one stream per model: twins of one depth draw the same sets
    for k in range(2, min(config.max_deleted, len(pool)) + 1):
        for d in range(config.draws):
            chosen = sorted(int(i) for i in rng.choice(pool, size=k, replace=False))
            rows.append(
                dict(
                    kind="random",
                    n_deleted=k,
                    draw=d,
                    block=";".join(names[i] for i in chosen),
                    block_index=None,
                    downsampling=False,
                    test_acc=acc(tuple(names[i] for i in chosen)),
                )
            )
    intact = rows[0]["test_acc"]
    for row in rows:
        row["intact_test_acc"] = intact
    return rows


def run_lesion(
    path: str | os.PathLike[str], config: LesionConfig | None = None, progress: bool | None = None
) -> LesionResult:
    """Lesion every complete run with saved weights in a sweep folder, or the one run folder ``path``.

    Raises:
        UsageError: ``path`` is not a sweep or run folder, or holds no complete run with ``model.pt``.
    """
    config = (config or LesionConfig()).validate()
    path = Path(path)
    runs, is_sweep = saved_runs(path)
    usable, skipped = usable_runs(runs, path, is_sweep, "lesioned")
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    subsets = [config.test_subset or r.config.test_subset for r in usable]
    full = load_split(False, config.data_dir, None if None in subsets else max(subsets), device)
    for line in skipped:
        log.warning("lesion: left out %s", line)
    rows = []
    with Progress(len(usable), "lesion", "run", progress) as shown:
        for run in usable:
            n = config.test_subset or run.config.test_subset or len(full)
            test = Split(full.images[:n], full.labels[:n])
            c = run.config
            head = dict(run_id=run.path.name, arch=c.arch, depth=c.depth, width=c.width, norm=c.norm, seed=c.seed)
            tail = dict(recorded_test_acc=(run.summary or {}).get("final_test_acc"), test_images=len(test))
            try:
                model = load_model(run.path, device)
            except UsageError as exc:  # weights that do not load: one run of a sweep is left out, a run folder fails
                if not is_sweep or len(usable) == 1:
                    raise
                skipped.append(f"{run.path.name}: {exc}")
                log.warning("lesion: left out %s", skipped[-1])
                shown.done(run.path.name)
                continue
            rows += [{**head, **row, **tail} for row in lesion_model(model, test, config)]
            shown.done(run.path.name)
    if not rows:
        raise UsageError(f"no run of {path} could be lesioned ({'; '.join(skipped[:3])}).")
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"draw": "Int64", "block_index": "Int64", "downsampling": "boolean"}
    )
    return LesionResult(frame, skipped)


# ---------------------------------------------------------------- output


def default_out(path: str | os.PathLike[str]) -> Path:
    """``SWEEP_DIR/lesion``; for a run folder ``RUN_DIR-lesion`` beside it."""
    return output_beside(path, "lesion")


def check_out(out: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output folder that holds anything but an earlier lesion folder."""
    return prepare_output(out, "lesion")


def write_lesion(result: LesionResult, out: str | os.PathLike[str]) -> list[Path]:
    """Write ``lesion.csv`` and the figures into ``out``, swapped in whole; returns the paths."""
    out = check_out(out)
    return write_study(out, "lesion", {"lesion.csv": result.frame}, lesion_figures(result.frame))
