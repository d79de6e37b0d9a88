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
from matplotlib.ticker import MaxNLocator
from torch import nn

from resgrad.data import Split, load_split
from resgrad.errors import UsageError, check_positive
from resgrad.experiments import SavedRun, arch_colors, arch_legend, mean_band, new_figure, png, saved_runs
from resgrad.files import atomic_dir, prepare_output, write_bytes, write_csv
from resgrad.models import Block, blocks
from resgrad.train import evaluate, load_model, resolve_device

log = logging.getLogger(__name__)

COLUMNS = [
    "run_id",
    "arch",
    "depth",
    "width",
    "norm",
    "seed",
    "kind",
    "n_deleted",
    "draw",
    "block",
    "block_index",
    "downsampling",
    "test_acc",
    "intact_test_acc",
    "recorded_test_acc",
    "test_images",
]
KINDS = ("intact", "single", "random")
# Test images per forward pass: a GPU wants large batches; on a CPU small ones stay in cache and run faster.
EVAL_BATCH = {"cpu": 100, "cuda": 4000}
FIGURES = {
    "lesion_single_block": "Test accuracy with one block deleted",
    "lesion_n_deleted": "Test accuracy vs number of deleted blocks",
}


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
    """What :func:`run_lesion` measures."""

    max_deleted: int = 10  # K: random sets of k = 2..K non-downsampling blocks (capped at how many there are)
    draws: int = 5  # N: random sets per k
    test_subset: int | None = None  # first N test images (default: the run's own test subset)
    seed: int = 0  # seeds the random sets
    device: str = "auto"  # cpu | cuda | auto
    batch_size: int | None = None  # test images per forward pass (default: EVAL_BATCH for the device)
    data_dir: str | None = None  # folder holding MNIST/raw (default: $RESGRAD_DATA or ./data)
    threads: int | None = None  # torch threads on the CPU (default: torch's choice)

    def validate(self) -> LesionConfig:
        for name in ("max_deleted", "draws"):
            check_positive(name.replace("_", "-"), getattr(self, name))
        check_positive("batch-size", self.batch_size, allow_none=True)
        check_positive("threads", self.threads, allow_none=True)
        check_positive("test-subset", self.test_subset, allow_none=True)
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be a whole number from 0 to 2**63-1, got {self.seed}.")
        return self


@dataclass
class LesionResult:
    frame: pd.DataFrame  # one row per evaluation, columns COLUMNS
    skipped: list[str] = field(default_factory=list)  # one line per run left out, and why


def _eligible(runs: list[SavedRun], path: Path, is_sweep: bool) -> tuple[list[SavedRun], list[str]]:
    """Complete runs with weights; a one-line reason for every other run."""
    usable, skipped = [], []
    for run in runs:
        why = run.unusable()
        if why:
            skipped.append(f"{run.path.name}: {why}")
        else:
            usable.append(run)
    if not usable:
        if not is_sweep and runs:
            raise UsageError(
                f"run folder {path} cannot be lesioned: {runs[0].unusable()}; "
                "only complete runs with their model.pt are (rerun it with `resgrad train --force`)."
            )
        reasons = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise UsageError(
            f"sweep folder {path} holds no complete run with saved weights (model.pt) "
            f"({reasons or 'no run folders'}); rerun it with `resgrad sweep ... --force`."
        )
    return usable, skipped


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
    from tqdm.auto import tqdm

    from resgrad.train import progress_enabled

    config = (config or LesionConfig()).validate()
    path = Path(path)
    runs, is_sweep = saved_runs(path)
    usable, skipped = _eligible(runs, path, is_sweep)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    subsets = [config.test_subset or r.config.test_subset for r in usable]
    full = load_split(False, config.data_dir, None if None in subsets else max(subsets), device)
    for line in skipped:
        log.warning("lesion: left out %s", line)
    rows = []
    for run in tqdm(usable, desc="lesion", unit="run", disable=not progress_enabled(progress)):
        n = config.test_subset or run.config.test_subset or len(full)
        test = Split(full.images[:n], full.labels[:n])
        c = run.config
        head = dict(run_id=run.path.name, arch=c.arch, depth=c.depth, width=c.width, norm=c.norm, seed=c.seed)
        tail = dict(recorded_test_acc=(run.summary or {}).get("final_test_acc"), test_images=len(test))
        model = load_model(run.path, device)
        rows += [{**head, **row, **tail} for row in lesion_model(model, test, config)]
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"draw": "Int64", "block_index": "Int64", "downsampling": "boolean"}
    )
    return LesionResult(frame, skipped)


# ---------------------------------------------------------------- output


def default_out(path: str | os.PathLike[str]) -> Path:
    """``SWEEP_DIR/lesion``; for a run folder ``RUN_DIR-lesion`` beside it (a run folder holds only its run)."""
    path = Path(path)
    return path / "lesion" if (path / "sweep.json").is_file() else path.with_name(f"{path.name}-lesion")


def read_lesion(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``lesion.csv`` as written by :func:`write_lesion`, with its column types."""
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}")
    return frame.astype({"draw": "Int64", "block_index": "Int64", "downsampling": "boolean", "block": "string"})


def check_out(out: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output folder that holds anything but an earlier lesion folder."""
    return prepare_output(out, "lesion")


def write_lesion(result: LesionResult, out: str | os.PathLike[str]) -> list[Path]:
    """Write ``lesion.csv`` and the figures into ``out``, swapped in whole; returns the paths."""
    out = check_out(out)
    figures = lesion_figures(result.frame)
    with atomic_dir(out) as tmp:
        write_csv(tmp / "lesion.csv", result.frame)
        for name, (_, data, _) in figures.items():
            write_bytes(tmp / f"{name}.png", data)
    return [out / "lesion.csv", *(out / f"{name}.png" for name in figures)]


def _combos(frame: pd.DataFrame) -> list[tuple[str, dict[str, object]]]:
    """One figure row per (norm, width) the frame holds, labelled when there is more than one."""
    combos = frame[["norm", "width"]].drop_duplicates().sort_values(["norm", "width"]).to_dict("records")
    label = len(combos) > 1
    return [(f"norm={c['norm']}, width={c['width']}" if label else "", c) for c in combos]


def _select(frame: pd.DataFrame, **values: object) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for k, v in values.items():
        mask &= (frame[k] == v).to_numpy()
    return frame[mask]


def lesion_figures(frame: pd.DataFrame) -> dict[str, tuple[str, bytes, str]]:
    """``{name: (heading, png_bytes, caption)}`` for the two lesion figures."""
    import seaborn as sns

    frame = frame.assign(test_acc_pct=100 * frame["test_acc"], intact_pct=100 * frame["intact_test_acc"])
    colors = arch_colors(frame["arch"])
    combos = _combos(frame)
    depths = sorted(frame["depth"].unique())
    n_seeds = frame.groupby(["arch", "depth", "norm", "width"])["seed"].nunique().max()
    out = {}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        fig, axes = new_figure(len(combos), len(depths), FIGURES["lesion_single_block"])
        for i, (label, combo) in enumerate(combos):
            for j, depth in enumerate(depths):
                ax = axes[i, j]
                part = _select(frame, depth=depth, **combo)
                for arch, color in colors.items():
                    single = _select(part, arch=arch, kind="single")
                    if single.empty:
                        continue
                    mean_band(ax, single, "block_index", "test_acc_pct", color, arch)
                    ax.axhline(
                        _select(part, arch=arch, kind="intact")["test_acc_pct"].mean(), color=color, lw=0.8, ls=":"
                    )
                for b in sorted(set(part.loc[part["downsampling"].eq(True), "block_index"])):
                    ax.axvline(b, color="0.55", lw=0.8, ls="-.")
                ax.axhline(10, color="0.3", lw=0.6)
                ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
                ax.set_xlabel("deleted block (index from the input)" if i == len(combos) - 1 else "")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel("test accuracy (%)" if j == 0 else "")
        axes[0, 0].set_ylim(0, 100)
        arch_legend(fig, colors, "min–max over seeds" if n_seeds > 1 else None)
        seeds = f"mean over {n_seeds} seeds, band: min–max" if n_seeds > 1 else "one seed"
        out["lesion_single_block"] = (
            FIGURES["lesion_single_block"],
            png(fig),
            f"Test accuracy with one block replaced by its shortcut, against the block's index ({seeds}). Dotted: "
            "the intact net; dash-dotted verticals: downsampling blocks (their shortcut subsamples and widens); "
            "grey line: chance (10 %). Cf. Veit et al. (2016), Fig. 3.",
        )

        fig, axes = new_figure(len(combos), len(depths), FIGURES["lesion_n_deleted"])
        for i, (label, combo) in enumerate(combos):
            for j, depth in enumerate(depths):
                ax = axes[i, j]
                part = _select(frame, depth=depth, **combo)
                # k = 0: intact; k = 1: every single non-downsampling block; k >= 2: the random sets.
                part = part[(part["kind"] != "single") | part["downsampling"].eq(False)]
                for arch, color in colors.items():
                    data = _select(part, arch=arch)
                    if not data.empty:
                        mean_band(ax, data, "n_deleted", "test_acc_pct", color, arch)
                ax.axhline(10, color="0.3", lw=0.6)
                ax.set_title(" · ".join(t for t in (f"depth {depth}", label) if t), fontsize=9)
                ax.set_xlabel("blocks deleted" if i == len(combos) - 1 else "")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel("test accuracy (%)" if j == 0 else "")
        axes[0, 0].set_ylim(0, 100)
        arch_legend(fig, colors, "min–max over sets and seeds")
        out["lesion_n_deleted"] = (
            FIGURES["lesion_n_deleted"],
            png(fig),
            "Test accuracy with k non-downsampling blocks deleted: k = 0 the intact net, k = 1 each single block, "
            "k ≥ 2 random sets (the same sets for both twins). Lines: mean over sets and seeds; band: min–max. "
            "Grey line: chance (10 %). Cf. Veit et al. (2016), Fig. 5a.",
        )
    return out


def lesion_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per norm, width, depth and arch, means over seeds (%): intact; one block deleted (mean over the
    non-downsampling blocks, the worst of them, mean over the downsampling ones); the most blocks deleted."""
    rows = []
    for keys, g in frame.groupby(["norm", "width", "depth", "arch"], sort=True):
        single = g[g["kind"] == "single"]
        plain_single = single[single["downsampling"].eq(False)]
        down = single[single["downsampling"].eq(True)]
        rand = g[g["kind"] == "random"]
        k = int(rand["n_deleted"].max()) if len(rand) else None
        rows.append(
            {
                **dict(zip(["norm", "width", "depth", "arch"], keys)),
                "seeds": g["seed"].nunique(),
                "intact": 100 * g.loc[g["kind"] == "intact", "test_acc"].mean(),
                "one block deleted, mean": 100 * plain_single["test_acc"].mean(),
                "one block deleted, worst": 100 * plain_single.groupby("seed")["test_acc"].min().mean(),
                "downsampling block deleted, mean": 100 * down["test_acc"].mean(),
                "most deleted (k)": k,
                "k deleted, mean": 100 * rand.loc[rand["n_deleted"] == k, "test_acc"].mean() if k else np.nan,
            }
        )
    return pd.DataFrame(rows)


def lesion_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`lesion_table` as text: accuracies with two decimals, missing values empty."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    return table.apply(lambda col: col.map(cell))
