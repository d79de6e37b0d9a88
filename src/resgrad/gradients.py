"""Per-layer gradient-norm recording with hooks, cheap enough to leave on.

Two quantities, per recorded step:

- ``weight_grad``: ‖∂L/∂W‖₂ of every weighted layer (a module owning a ``weight``
  parameter, normalisation layers left out unless asked), in forward order;
- ``activation_grad``: ‖∂L/∂h‖₂ of the output h of every block (or named module),
  the backward signal, captured by a tensor hook that a forward hook registers.

Norms are computed on the device and stay there as one small tensor per recorded
step; nothing is copied to the host until :meth:`GradientRecorder.to_frame`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from resgrad.errors import UsageError

Schedule = Callable[[int], bool]
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
COLUMNS = ["step", "epoch", "layer_index", "layer", "quantity", "norm"]


def every(k: int) -> Schedule:
    """Record at steps 0, k, 2k, ..."""
    if k < 1:
        raise UsageError(f"record-every must be >= 1, got {k}.")
    return lambda step: step % k == 0


def log_spaced(total_steps: int, num: int = 50) -> Schedule:
    """Record at about ``num`` steps spread evenly on a log scale over ``[0, total_steps)``."""
    if total_steps < 1 or num < 1:
        raise UsageError(f"a log-spaced schedule needs total_steps >= 1 and num >= 1, got {total_steps}, {num}.")
    steps = {0} | {int(round(s)) for s in np.geomspace(1, max(total_steps - 1, 1), num)}
    return steps.__contains__


def _as_schedule(schedule: int | Schedule | Iterable[int]) -> Schedule:
    if isinstance(schedule, int):
        return every(schedule)
    if callable(schedule):
        return schedule
    return frozenset(schedule).__contains__


class GradientRecorder:
    """Record gradient norms of any ``nn.Module`` during training.

    Use as a context manager; hooks are removed on exit, also on an exception::

        with GradientRecorder(model, schedule=10) as rec:
            for step, (x, y) in enumerate(loader):
                rec.begin_step(step, epoch)
                loss_fn(model(x), y).backward()
                rec.end_step()      # reads weight gradients; call before zero_grad
                opt.step(); opt.zero_grad()
        frame = rec.to_frame()

    Args:
        model: the model to watch.
        schedule: record every k steps (int), at the steps in an iterable, or where
            a callable ``schedule(step)`` is true.
        modules: qualified names of the modules whose output gradient is the
            backward signal; by default every :class:`resgrad.models.Block`.
        include_norm_layers: also record the weight gradient of normalisation layers.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: int | Schedule | Iterable[int] = 1,
        modules: Sequence[str] | None = None,
        include_norm_layers: bool = False,
    ) -> None:
        from resgrad.models import blocks  # late import: models pulls in nothing from here

        self.model = model
        self.schedule = _as_schedule(schedule)
        named = dict(model.named_modules())
        names = blocks(model) if modules is None else list(modules)
        missing = [n for n in names if n not in named]
        if missing:
            raise UsageError(f"no module named {', '.join(map(repr, missing))} in the model; names come from model.named_modules().")
        self._signal_modules = [(n, named[n]) for n in names]
        self._weight_candidates = [
            (n, m)
            for n, m in named.items()
            if isinstance(m._parameters.get("weight"), torch.Tensor)
            and (include_norm_layers or not isinstance(m, NORM_LAYERS))
        ]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order_handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seen: dict[str, nn.Module] = {}  # weighted layers in first-forward order
        self.layers: list[str] | None = None  # fixed after the first step
        self.blocks: list[str] = names
        self._active = False
        self._step = 0
        self._epoch = 0
        self._signal: list[torch.Tensor | None] = []
        self._records: list[tuple[int, int, torch.Tensor]] = []

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> "GradientRecorder":
        for name, module in self._weight_candidates:
            self._order_handles.append(module.register_forward_hook(self._order_hook(name)))
        for i, (_, module) in enumerate(self._signal_modules):
            self._handles.append(module.register_forward_hook(self._signal_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this recorder registered."""
        for h in self._handles + self._order_handles:
            h.remove()
        self._handles.clear()
        self._order_handles.clear()

    @property
    def num_hooks(self) -> int:
        return len(self._handles) + len(self._order_handles)

    # -- hooks ------------------------------------------------------------------

    def _order_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            self._seen.setdefault(name, module)

        return hook

    def _signal_hook(self, index: int) -> Callable[..., None]:
        def store(grad: torch.Tensor) -> None:
            self._signal[index] = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32)

        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if self._active and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(store)

        return hook

    # -- per step -----------------------------------------------------------------

    def begin_step(self, step: int, epoch: int = 0) -> bool:
        """Call before the forward pass; returns whether this step is recorded."""
        self._step, self._epoch = step, epoch
        self._active = bool(self.schedule(step))
        if self._active:
            self._signal = [None] * len(self._signal_modules)
        return self._active

    def end_step(self) -> None:
        """Call after ``backward()`` and before the gradients are cleared."""
        if self.layers is None:
            self.layers = list(self._seen)
            self._layer_params = [self._seen[n].weight for n in self.layers]
            for h in self._order_handles:
                h.remove()
            self._order_handles.clear()
        if not self._active:
            return
        self._active = False
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._layer_params]
        norms = list(torch._foreach_norm([g.detach().float() for g in grads])) if grads else []
        device = norms[0].device if norms else "cpu"
        # A watched module whose output got no gradient this step: NaN, kept like any other value.
        signal = [s if s is not None else torch.full((), math.nan, device=device) for s in self._signal]
        if norms or signal:
            self._records.append((self._step, self._epoch, torch.stack(norms + signal)))
        self._signal = []

    # -- results ------------------------------------------------------------------

    def log_to(self, writer: "torch.utils.tensorboard.SummaryWriter", step: int | None = None) -> None:
        """Write the last recorded step's norms to a TensorBoard ``SummaryWriter``.

        Tags as ``resgrad export`` names them (``weight_grad/<index>_<layer>``, ...), at that
        recorded step or at ``step``. Call it after ``end_step`` of a recorded step; it reads
        the norms on the host (one synchronisation).
        """
        from resgrad.export import add_grad_scalars  # late import: export needs train, which needs this module

        frame = self.to_frame()
        if len(frame):
            add_grad_scalars(writer, frame[frame["step"] == frame["step"].iloc[-1]], step)

    def to_frame(self, until_step: int | None = None) -> pd.DataFrame:
        """A tidy frame: ``step, epoch, layer_index, layer, quantity, norm``.

        Args:
            until_step: keep only steps <= this one.
        """
        records = [r for r in self._records if until_step is None or r[0] <= until_step]
        layers = self.layers or []
        if not records:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["int64", "int64", "int64", "object", "object", "float64"])})
        values = torch.stack([r[2] for r in records]).cpu().double().numpy()  # the one host transfer
        n_rec, n_cols = values.shape
        names = np.array(layers + self.blocks, dtype=object)
        index = np.concatenate([np.arange(len(layers)), np.arange(len(self.blocks))])
        quantity = np.array(["weight_grad"] * len(layers) + ["activation_grad"] * len(self.blocks), dtype=object)
        return pd.DataFrame(
            {
                "step": np.repeat([r[0] for r in records], n_cols).astype("int64"),
                "epoch": np.repeat([r[1] for r in records], n_cols).astype("int64"),
                "layer_index": np.tile(index, n_rec).astype("int64"),
                "layer": np.tile(names, n_rec),
                "quantity": np.tile(quantity, n_rec),
                "norm": values.reshape(-1),
            },
            columns=COLUMNS,
        )
