"""How far channels-last's and contiguous float32 gradients lie from float64 ones, at init, per layer.

    python benchmarks/layout_accuracy.py                 # plain/residual, depths 8 and 56, width 4 and 8, batch norm
    python benchmarks/layout_accuracy.py --norms none batch --batch-size 64

One real MNIST batch, the same initial weights in three copies: float32 contiguous, float32
channels-last (resgrad's CPU default) and float64 contiguous (the reference). For each net it prints
the largest and the median relative error ‖g32 − g64‖ / ‖g64‖ over the weighted layers' weight
gradients, for both float32 layouts. Not a timing: the numbers are the same on a busy machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F

from resgrad.config import TrainConfig
from resgrad.data import load_split
from resgrad.train import initial_model


def layout_errors(config: TrainConfig, batch: int, data_dir: str | None) -> dict[str, list[float]]:
    """Relative error of each weight gradient against float64, for ``contiguous`` and ``channels_last``."""
    split = load_split(True, data_dir, batch)
    x, y = split.images, split.labels
    base = initial_model(config).train()
    reference = copy.deepcopy(base).double()
    F.cross_entropy(reference(x.double()), y).backward()
    errors: dict[str, list[float]] = {}
    for layout in ("contiguous", "channels_last"):
        model = copy.deepcopy(base)
        xx = x
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        F.cross_entropy(model(xx), y).backward()
        errors[layout] = [
            float((p.grad.double() - r.grad).norm() / r.grad.norm())
            for (name, p), r in zip(model.named_parameters(), reference.parameters())
            if name.endswith("weight") and p.dim() > 1 and r.grad.norm() > 0
        ]
    return errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["plain", "residual"])
    p.add_argument("--depths", nargs="+", type=int, default=[8, 56])
    p.add_argument("--widths", nargs="+", type=int, default=[4, 8])
    p.add_argument("--norms", nargs="+", default=["batch"])
    p.add_argument("--init", default="kaiming")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| net | seed | contiguous: max / median rel. error | channels-last: max / median rel. error |")
    print("|---|---:|---|---|")
    for arch in args.archs:
        for depth in args.depths:
            for width in args.widths:
                for norm in args.norms:
                    for seed in args.seeds:
                        config = TrainConfig(arch=arch, depth=depth, width=width, norm=norm, init=args.init, seed=seed)
                        e = layout_errors(config, args.batch_size, args.data_dir)
                        cells = [f"{max(v):.1e} / {statistics.median(v):.1e}" for v in e.values()]
                        print(f"| {arch}-{depth} w{width} {norm} | {seed} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
