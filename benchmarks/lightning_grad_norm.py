"""resgrad's recorder beside Lightning's ``grad_norm`` on the same model and steps, as a Markdown table.

    python benchmarks/lightning_grad_norm.py                  # plain-56, width 16, batch 128, CPU, 10 rounds
    python benchmarks/lightning_grad_norm.py --depth 8 --width 4 --batch-size 16 --rounds 2   # a quick check

What it measures, on one real MNIST batch and the same initial weights for every variant:

- how many parameters and weighted layers each reports as exactly 0 after one backward at init
  (``grad_norm`` forms a float32 norm per parameter: squares below 1e-45 vanish; the recorder's
  float64 norm is 0 only when every element is 0), and the first layer's norm by each;
- the backward signal ‖∂L/∂h‖ per block, which ``grad_norm`` cannot give (it sees ``.grad`` only);
- the cost per training step (forward, backward, SGD step) of each, both called where a Lightning
  callback calls them (``on_before_optimizer_step``) and both ending in a dict of Python floats
  as a logger receives it: ``{k: v.item()}`` of ``grad_norm`` (one host copy per parameter), and
  ``scalars(last_frame())`` of the recorder (one host copy). Lightning's own ``self.log_dict``
  bookkeeping, which adds about 0.6 ms per key on a CPU, is left out of both.

Paired rounds as in ``benchmarks/recorder_overhead.py``: each round times a few steps of every
variant, the order rotating between rounds; the ratio to the uninstrumented step is the median
over rounds of the ratio within a round, with its quartiles.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from resgrad.data import load_split
from resgrad.gradients import GradientRecorder
from resgrad.models import build_model
from resgrad.records import scalars

try:
    from lightning.pytorch.utilities import grad_norm
except ImportError:
    raise SystemExit(
        "this benchmark needs Lightning: pip install 'resgrad[lightning]' (make setup installs it)."
    ) from None

VARIANTS = ("none", "grad_norm", "resgrad")


def zeros_at_init(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    """One backward at init: what each tool reports, and how many of its norms are exactly 0."""
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        F.cross_entropy(model(x), y).backward()
        rec.end_step()
        frame = rec.to_frame()
    lightning = {k.split("/", 1)[1]: v.item() for k, v in grad_norm(model, 2).items() if "/" in k}
    q = frame.set_index(["quantity", "layer"])["norm"]
    layer_weights = {layer: f"{layer}.weight" for layer in rec.layers}
    signal = frame[frame.quantity == "activation_grad"]["norm"].to_numpy()
    first = rec.layers[0]
    model.zero_grad(set_to_none=True)
    return {
        "params": len(lightning),
        "layers": len(rec.layers),
        "blocks": len(signal),
        "gn_zero_params": sum(v == 0.0 for v in lightning.values()),
        "rg_zero_params": int((frame[frame.quantity == "param_grad"]["norm"] == 0).sum()),
        "gn_zero_layers": sum(lightning[w] == 0.0 for w in layer_weights.values()),
        "rg_zero_layers": int((frame[frame.quantity == "weight_grad"]["norm"] == 0).sum()),
        "first": first,
        "gn_first": lightning[layer_weights[first]],
        "rg_first": q["weight_grad", first],
        "signal_first": signal[0] if len(signal) else float("nan"),
        "signal_last": signal[-1] if len(signal) else float("nan"),
    }


def make_step(variant: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rec: GradientRecorder | None):
    """One training step with the variant's instrumentation where a Lightning callback would run it."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5)
    counter = [0]
    sink: list[dict[str, float]] = []

    def step() -> None:
        if rec is not None:
            rec.begin_step(counter[0])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if variant == "grad_norm":
            sink[:] = [{k: v.item() for k, v in grad_norm(model, 2).items()}]
        elif variant == "resgrad":
            rec.end_step()  # type: ignore[union-attr]
            sink[:] = [scalars(rec.last_frame())]  # type: ignore[union-attr]
        opt.step()
        counter[0] += 1

    return step


def measure(depth: int, width: int, batch_size: int, rounds: int, steps: int, data_dir: str | None) -> dict:
    split = load_split(False, data_dir, subset=batch_size)
    x, y = split.images, split.labels
    models = {}
    for name in ("zeros", *VARIANTS):  # the same initial weights for each
        torch.manual_seed(0)
        models[name] = build_model("plain", depth, width)
    result = zeros_at_init(models["zeros"], x, y)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with GradientRecorder(models["resgrad"], schedule=1) as rec:
        fns = {v: make_step(v, models[v], x, y, rec if v == "resgrad" else None) for v in VARIANTS}
        for fn in fns.values():  # warm-up outside the measurement
            for _ in range(2):
                fn()
        threads = torch.get_num_threads()
        timers = {v: benchmark.Timer(stmt="step()", globals={"step": fn}, num_threads=threads) for v, fn in fns.items()}
        for r in range(rounds):  # paired rounds, the order rotating: a drift in machine load hits all alike
            for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                times[v].append(timers[v].timeit(steps).mean * 1e3)
    for v in ("grad_norm", "resgrad"):
        ratios = [t / base for t, base in zip(times[v], times["none"])]
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
        result[f"{v}_ratio"], result[f"{v}_q"] = statistics.median(ratios), (q1, q3)
        result[f"{v}_ms"] = statistics.median(times[v])
    result["none_ms"], result["threads"] = statistics.median(times["none"]), threads
    return result


def table(r: dict, depth: int, width: int, batch_size: int, rounds: int) -> str:
    def ratio(v: str) -> str:
        q1, q3 = r[f"{v}_q"]
        return f"{r[f'{v}_ms']:.1f} ms, **{r[f'{v}_ratio']:.3f}** (quartiles {q1:.3f}, {q3:.3f})"

    return "\n".join(
        [
            f"plain-{depth}, width {width}, one MNIST batch of {batch_size}, PyTorch's default init, "
            f"CPU, {r['threads']} threads, torch {torch.__version__}; {rounds} paired rounds",
            "",
            "| | Lightning `grad_norm` | resgrad recorder |",
            "| --- | --- | --- |",
            f"| parameters reported as exactly 0 at init (of {r['params']}) | {r['gn_zero_params']} "
            f"| {r['rg_zero_params']} |",
            f"| weighted layers reported as exactly 0 at init (of {r['layers']}) | {r['gn_zero_layers']} "
            f"| {r['rg_zero_layers']} |",
            f"| first layer (`{r['first']}`) weight-gradient norm at init | {r['gn_first']:.4g} | {r['rg_first']:.4g} |",
            f"| backward signal ‖∂L/∂h‖ per block ({r['blocks']} blocks) | — (sees `.grad` only) "
            f"| first block {r['signal_first']:.3g}, last block {r['signal_last']:.3g} |",
            f"| training step (uninstrumented: {r['none_ms']:.1f} ms); ratio, median of paired rounds "
            f"| {ratio('grad_norm')} | {ratio('resgrad')} |",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10, help="paired rounds of the three variants (default: 10)")
    p.add_argument("--steps", type=int, default=2, help="training steps per variant and round (default: 2)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--data-dir")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = measure(a.depth, a.width, a.batch_size, a.rounds, a.steps, a.data_dir)
    print(table(r, a.depth, a.width, a.batch_size, a.rounds))


if __name__ == "__main__":
    main()
