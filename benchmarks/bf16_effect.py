"""What --dtype bfloat16 does to the recorded quantities and to the training curves, against float32.

    python benchmarks/bf16_effect.py --threads 1                                # ~30 minutes on 2 idle cores
    python benchmarks/bf16_effect.py --threads 1 --out results/bf16 --docs docs/performance.md   # `make bf16`

1. One step, the same weights and batch: every quantity the recorder records, from a
   float32 step and from a bfloat16 one (forward and loss under autocast), at init and
   after 100 float32 steps; the relative difference per layer (median and largest).
2. Training curves: float32 and bfloat16 runs of the same seeds (the seed net as
   sweeps/seed-resnet.toml trains it, one epoch; residual-56 with batch norm as the depth
   sweep trains it), compared with what a different seed moves them: the training loss
   (mean over 50 steps), the final test accuracy and the log10 first/last-layer gradient
   ratio at the last recorded step.

``--out DIR`` writes ``quantities.csv`` and ``curves.csv``; ``--docs FILE`` replaces the block
between ``<!-- bf16:begin -->`` and ``<!-- bf16:end -->`` with the tables :func:`render` makes.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from resgrad.compute import bfloat16_is_native
from resgrad.config import TrainConfig
from resgrad.data import endless_batches, load_split
from resgrad.gradients import GradientRecorder
from resgrad.records import QUANTITIES
from resgrad.train import device_name, initial_model, make_optimizer, train, train_step

BEGIN, END = "<!-- bf16:begin -->", "<!-- bf16:end -->"
MODELS = {
    "seed-residual": dict(arch="seed-residual", epochs=1, batch_size=64, lr=0.01, momentum=0.5, record_every=100),
    "residual-56 w8": dict(
        arch="residual", depth=56, width=8, norm="batch", init="kaiming", steps=300, batch_size=64, lr=0.01,
        momentum=0.9, eval_every=50, test_subset=2000, record_every=10,
    ),
}  # fmt: skip


def log10_grad_ratio(grad_norms: pd.DataFrame, last: bool) -> float:
    """log10 of the first over the last weighted layer's gradient norm at the first (last) recorded step."""
    w = grad_norms[grad_norms.quantity == "weight_grad"]
    at = w[w.step == (w.step.max() if last else w.step.min())].sort_values("layer_index")
    return float(np.log10(at.norm.iloc[0] / at.norm.iloc[-1]))


def one_step(config: TrainConfig, after: int, data_dir: str | None) -> pd.DataFrame:
    """The recorded quantities of one float32 and one bfloat16 step from the same weights and batch."""
    torch.manual_seed(config.seed)
    split = load_split(True, data_dir, 6400)
    model = initial_model(config).to(memory_format=torch.channels_last)
    opt = make_optimizer(config, model.parameters())
    batches = endless_batches(len(split), config.batch_size, config.seed)
    for step in range(after):  # float32 training to the point of comparison
        _, idx = next(batches)
        train_step(model, opt, split.images[idx], split.labels[idx], None, step, 0, "float32", True)
    _, idx = next(batches)
    frames = {}
    for dtype in ("float32", "bfloat16"):
        twin = copy.deepcopy(model)
        twin_opt = make_optimizer(config, twin.parameters())
        with GradientRecorder(twin, 1) as rec:
            train_step(twin, twin_opt, split.images[idx], split.labels[idx], rec, 0, 0, dtype, True)
        frames[dtype] = rec.to_frame().set_index(["quantity", "layer_index"])["norm"]
    both = pd.DataFrame(frames)
    both["rel"] = ((both.bfloat16 - both.float32).abs() / both.float32.abs()).where(both.float32 != 0)
    return both.reset_index()


def quantities(data_dir: str | None) -> pd.DataFrame:
    rows = []
    for label, fields in MODELS.items():
        config = TrainConfig(**fields, device="cpu").validate()
        for after in (0, 100):
            both = one_step(config, after, data_dir)
            for q in QUANTITIES:
                rel = both[both.quantity == q].rel.dropna()
                rows.append(
                    dict(model=label, after_steps=after, quantity=q, layers=len(rel), median_rel=rel.median(),
                         max_rel=rel.max(), exact=bool((rel == 0).all()))
                )  # fmt: skip
    return pd.DataFrame(rows)


def curves(seeds: list[int], threads: int, data_dir: str | None) -> pd.DataFrame:
    rows = []
    for label, fields in MODELS.items():
        for dtype in ("float32", "bfloat16"):
            for seed in seeds:
                config = TrainConfig(**fields, seed=seed, dtype=dtype, threads=threads, device="cpu", data_dir=data_dir)
                result = train(config, progress=False)
                loss = result.metrics.train_loss.rolling(50, min_periods=1).mean()
                rows += [
                    dict(model=label, dtype=dtype, seed=seed, step=int(s), smoothed_loss=float(v),
                         final_test_acc=result.summary["final_test_acc"], images_per_s=result.summary["images_per_s"],
                         log10_grad_ratio_first=log10_grad_ratio(result.grad_norms, last=False),
                         log10_grad_ratio_last=log10_grad_ratio(result.grad_norms, last=True))
                    for s, v in zip(result.metrics.step, loss)
                ]  # fmt: skip
                print(f"2. {label} {dtype} seed {seed}: {result.summary['final_test_acc']:.4f}", flush=True)
    return pd.DataFrame(rows)


def render(folder: Path) -> str:
    """The docs block made from ``quantities.csv``, ``curves.csv`` and ``machine.json``."""
    q = pd.read_csv(folder / "quantities.csv")
    c = pd.read_csv(folder / "curves.csv")
    meta = json.loads((folder / "machine.json").read_text())
    lines = [
        BEGIN,
        f"Measured by `benchmarks/bf16_effect.py` on {meta['cpu']} (native bfloat16: {meta['native']}), "
        f"{meta['threads']} torch thread(s), torch {meta['torch']}, {meta['date']}"
        + (f" ({meta['note']})." if meta.get("note") else "."),
        "",
        "**One step, the same weights and batch**: bfloat16 against float32, relative difference per layer "
        "(median / largest over the layers).",
        "",
        "| quantity | "
        + " | ".join(f"{m}, step {a}" for m, a in q[["model", "after_steps"]].drop_duplicates().values)
        + " |",
    ]
    cols = q[["model", "after_steps"]].drop_duplicates().values
    lines.append("|---|" + "---:|" * len(cols))
    for quantity in dict.fromkeys(q.quantity):
        cells = []
        for m, a in cols:
            r = q[(q.model == m) & (q.after_steps == a) & (q.quantity == quantity)].iloc[0]
            cells.append("exact" if r.exact else f"{r.median_rel:.1e} / {r.max_rel:.1e}")
        lines.append(f"| `{quantity}` | " + " | ".join(cells) + " |")
    runs = c.drop_duplicates(["model", "dtype", "seed"])
    lines += [
        "",
        f"**Training curves**, seeds {', '.join(map(str, sorted(runs.seed.unique())))}: the mean over the seeds, "
        "and in brackets the spread between them (largest minus smallest). The training loss is smoothed over 50 "
        "steps; its gaps are the largest over the second half of training.",
        "",
        "| model | dtype | final test accuracy | log10 grad ratio, last recorded step | smoothed loss at the end | "
        "loss gap to float32, same seed | loss gap between float32 seeds | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (m, dtype), g in runs.groupby(["model", "dtype"], sort=False):
        curve = c[c.model == m].pivot_table(index="step", columns=["dtype", "seed"], values="smoothed_loss")
        half = curve[curve.index >= curve.index.max() / 2]
        ref, own = half["float32"], half[dtype]
        same_seed = "—" if dtype == "float32" else f"{float((own - ref).abs().max().max()):.4f}"
        seeds_apart = f"{float((ref.max(axis=1) - ref.min(axis=1)).max()):.4f}"
        end = curve[dtype].iloc[-1]
        acc, ratio = g.final_test_acc, g.log10_grad_ratio_last
        lines.append(
            f"| {m} | {dtype} | {100 * acc.mean():.1f} % ({100 * (acc.max() - acc.min()):.1f}) | "
            f"{ratio.mean():.2f} ({ratio.max() - ratio.min():.2f}) | {end.mean():.3f} ({end.max() - end.min():.3f}) | "
            f"{same_seed} | {seeds_apart} | {g.images_per_s.mean():,.0f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="2: seeds (default: 0 1 2)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $RESGRAD_DATA, else ./data)")
    p.add_argument("--out", type=Path, help="write the CSV files here")
    p.add_argument("--docs", type=Path, help="replace the bf16 block of this markdown file (needs --out)")
    p.add_argument("--note", default="", help="a note on the conditions, printed with the tables")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    folder = a.out or Path("runs/bf16")
    folder.mkdir(parents=True, exist_ok=True)
    quantities(a.data_dir).to_csv(folder / "quantities.csv", index=False)
    curves(a.seeds, a.threads, a.data_dir).to_csv(folder / "curves.csv", index=False)
    cpu = torch.device("cpu")
    meta = dict(cpu=device_name(cpu), native=bfloat16_is_native(cpu), threads=a.threads, torch=torch.__version__)
    meta["note"] = a.note
    (folder / "machine.json").write_text(json.dumps({**meta, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    block = render(folder)
    print(block)
    if a.docs:
        text = a.docs.read_text()
        head, rest = text.split(BEGIN, 1)
        a.docs.write_text(head + block + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
