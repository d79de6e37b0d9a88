"""Per-layer gradient-norm recording with hooks, cheap enough to leave on.

Per recorded step (column ``quantity``; the value is in column ``norm``):

- ``weight_grad``: ‖∂L/∂W‖₂ of every weighted layer (a module owning a ``weight``
  parameter, normalisation layers left out unless asked);
- ``weight_norm``: ‖W‖₂ of the same layers' weights, as the step's forward pass used them;
- ``activation_grad``: ‖∂L/∂h‖₂ of the output h of every block (or named module),
  the backward signal, captured by a tensor hook that a forward hook registers;
- ``act_deriv``: the mean of the activation's derivative σ′(z) over the input
  elements z of every activation module (``nn.ReLU``: the fraction of positive
  inputs; ``nn.Tanh``: mean 1 − tanh²(z); ``nn.Sigmoid``: mean σ(z)(1 − σ(z)));
- ``act_deriv_sq``: the mean of σ′(z)² over the same elements.

``layer_index`` counts each quantity's modules in the order the forward pass first
runs them (``weight_norm`` shares ``weight_grad``'s, ``act_deriv_sq`` ``act_deriv``'s). Norms are formed in float64 from the gradient as it is (float32,
bfloat16, float16), so they neither underflow nor overflow: a norm is 0 only when
every element is 0. They are computed on the device and stay there as one small
float64 tensor per recorded step; nothing is copied to the host until
:meth:`GradientRecorder.to_frame`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from resgrad.errors import UsageError
from resgrad.norms import ACTIVATION_DERIVATIVES, F64, norm64
from resgrad.records import QUANTITIES, Record, records_frame, scalars
from resgrad.schedules import Schedule, as_schedule

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def default_signal_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose class sets ``resgrad_block = True``, in module order."""
    return [name for name, m in model.named_modules() if getattr(type(m), "resgrad_block", False)]


def _buffer(buf: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """``buf`` if it is on ``device`` and long enough, else a float64 buffer of zeros there, holding ``buf``'s values."""
    if buf is not None and len(buf) >= size and buf.device == device:
        return buf
    grown = torch.zeros(max(size, 2 * len(buf) if buf is not None else size), dtype=F64, device=device)
    if buf is not None:
        grown[: len(buf)] = buf.to(device)
    return grown


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

    What one recorded step (``begin_step`` … ``end_step``) records:

    - a module whose forward runs several times in the step (shared weights): its
      ``activation_grad`` is the root of the sum of squares over the gradients of all its
      outputs, and its ``act_deriv`` the mean over the input elements of all its calls;
    - several ``backward()`` calls before ``end_step`` (gradient accumulation):
      ``activation_grad`` accumulates over them the same way, so it is the norm of the
      whole batch's ∂L/∂h, as ``weight_grad`` reads the accumulated ``.grad``;
    - a module first run after recording began is recorded from the first recorded step
      it runs in, with the next free ``layer_index``: the set of layers may grow;
    - NaN means "not measured": a weight whose ``.grad`` is None, a watched module whose
      output got no gradient, an activation module not run with autograd on or given a
      NaN input; 0 is a measured zero;
    - only forward passes that build a graph (output requires grad) count, so an
      evaluation under ``torch.no_grad()`` inside a recorded step changes nothing;
    - ``begin_step``/``end_step`` need the hooks: outside the ``with`` block they raise
      ``RuntimeError`` rather than record half the quantities.

    Args:
        model: the model to watch.
        schedule: record every k steps (int), at the steps in an iterable, or where
            a callable ``schedule(step)`` is true.
        modules: qualified names of the modules whose output gradient is the
            backward signal; by default every module whose class sets
            ``resgrad_block = True`` (resgrad's blocks, :class:`resgrad.models.Block`).
        include_norm_layers: also record the weight gradient of normalisation layers.

    Raises:
        UsageError: a bad schedule, ``modules`` given as one string, or a name that is not
            in the model.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: int | Schedule | Iterable[int] = 1,
        modules: Sequence[str] | None = None,
        include_norm_layers: bool = False,
    ) -> None:
        if isinstance(modules, (str, bytes)):
            raise UsageError(
                f"modules must be a list of module names, got the string {modules!r}; write modules=[{modules!r}]."
            )
        self.model = model
        self.schedule = as_schedule(schedule)
        named = dict(model.named_modules())
        names = default_signal_modules(model) if modules is None else list(modules)
        missing = [n for n in names if n not in named]
        if missing:
            raise UsageError(
                f"no module named {', '.join(map(repr, missing))} in the model; names come from model.named_modules()."
            )
        self._signal_modules = [(n, named[n]) for n in names]
        self._weight_candidates = [
            (n, m)
            for n, m in named.items()
            if isinstance(m._parameters.get("weight"), torch.Tensor)
            and (include_norm_layers or not isinstance(m, NORM_LAYERS))
        ]
        self._act_modules = [(n, m) for n, m in named.items() if type(m) in ACTIVATION_DERIVATIVES]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order_handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._hooked = False
        self.blocks: list[str] = names
        self.layers: list[str] = []  # weighted layers, in first-forward order; grows as new ones run
        self._layer_modules: list[nn.Module] = []
        self._layer_set: set[str] = set()
        self._dropped = 0  # how many of self.layers have had their order hook removed
        self.activations: list[str] = []  # activation modules, in first-forward order
        self._act_index: dict[str, int] = {}
        self._active = False
        self._generation = 0  # tells a late tensor hook (retained graph) from one of the current step
        self._step = 0
        self._epoch = 0
        # This step's sums, in float64 buffers kept from step to step and written in place: the
        # hooks allocate nothing that outlives them (small tensors that live through a step's big
        # ones fragment the CPU heap, and the allocator then pays in page faults).
        self._sig_buf: torch.Tensor | None = None  # per watched module: the norm so far (hypot)
        self._sig_seen: list[bool] = []
        self._act_buf: torch.Tensor | None = None  # per activation module i: Σσ′, Σσ′² so far at 2i, 2i + 1
        self._act_count: dict[int, int] = {}  # per activation module run this step: its element count
        self._records: list[Record] = []

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> GradientRecorder:
        for name, module in self._weight_candidates:
            if name not in self._layer_set:
                self._order_handles[name] = module.register_forward_hook(self._order_hook(name))
        for i, (_, module) in enumerate(self._signal_modules):
            self._handles.append(module.register_forward_hook(self._signal_hook(i)))
        for name, module in self._act_modules:
            self._handles.append(
                module.register_forward_hook(self._act_hook(name, ACTIVATION_DERIVATIVES[type(module)]))
            )
        self._hooked = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this recorder registered."""
        for h in [*self._handles, *self._order_handles.values()]:
            h.remove()
        self._handles.clear()
        self._order_handles.clear()
        self._hooked = False
        self._active = False

    @property
    def num_hooks(self) -> int:
        return len(self._handles) + len(self._order_handles)

    # -- hooks ------------------------------------------------------------------

    def _order_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if name not in self._layer_set:  # first run: the next layer_index (its hook goes at end_step)
                self._layer_set.add(name)
                self.layers.append(name)
                self._layer_modules.append(module)

        return hook

    def _signal_hook(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if self._active and isinstance(output, torch.Tensor) and output.requires_grad:
                generation = self._generation

                def store(grad: torch.Tensor) -> None:
                    if generation != self._generation:
                        return
                    buf = self._sig_buf = _buffer(self._sig_buf, len(self._signal_modules), grad.device)
                    slot = buf[index]
                    # hypot: the root of the sum of squares over several outputs, without over/underflow
                    torch.hypot(slot, norm64(grad).to(buf.device), out=slot)
                    self._sig_seen[index] = True

                output.register_hook(store)

        return hook

    def _act_hook(self, name: str, deriv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
            i = self._act_index.get(name)
            if i is None:
                i = self._act_index[name] = len(self.activations)
                self.activations.append(name)
            if not (self._active and isinstance(output, torch.Tensor) and output.requires_grad):
                return
            buf = self._act_buf = _buffer(self._act_buf, 2 * i + 2, output.device)
            # [Σσ′, Σσ′²] in float64, or a count that is both (σ′ is 0 or 1)
            buf[2 * i : 2 * i + 2].add_(deriv(inputs[0], output).to(buf.device))
            self._act_count[i] = self._act_count.get(i, 0) + output.numel()

        return hook

    # -- per step -----------------------------------------------------------------

    def _check_hooked(self, what: str) -> None:
        if not self._hooked:
            raise RuntimeError(
                f"{what}() needs the recorder's hooks: call it inside `with GradientRecorder(model) "
                "as rec:` (hooks are registered on entering the block and removed on leaving it)."
            )

    def begin_step(self, step: int, epoch: int = 0) -> bool:
        """Call before the forward pass; returns whether this step is recorded."""
        self._check_hooked("begin_step")
        self._step, self._epoch = step, epoch
        self._active = bool(self.schedule(step))
        self._generation += 1
        if self._active:
            self._sig_seen = [False] * len(self._signal_modules)
            self._act_count = {}
            for buf in (self._sig_buf, self._act_buf):
                if buf is not None:
                    buf.zero_()
        return self._active

    def end_step(self) -> None:
        """Call after ``backward()`` and before the gradients are cleared."""
        self._check_hooked("end_step")
        for name in self.layers[self._dropped :]:  # layers seen for the first time: their order hook is done
            handle = self._order_handles.pop(name, None)
            if handle is not None:
                handle.remove()
        self._dropped = len(self.layers)
        if not self._active:
            return
        self._active = False
        self._generation += 1
        weights = [m.weight for m in self._layer_modules]
        n_w, n_s, n_a = len(weights), len(self._signal_modules), len(self.activations)
        sizes = dict(zip(QUANTITIES, (n_w, n_w, n_s, n_a, n_a)))
        buffers = [b for b in (self._sig_buf, self._act_buf) if b is not None]
        device = weights[0].device if weights else buffers[0].device if buffers else torch.device("cpu")
        if n_w + n_s + n_a:
            # Few torch calls, written into one new tensor: between a step's big kernels each small op
            # costs tens of µs on the CPU.
            with torch.no_grad():
                values = torch.empty(sum(sizes.values()), dtype=F64, device=device)
                self._weight_norms(weights, values[: 2 * n_w])
                self._signal_norms(values[2 * n_w : 2 * n_w + n_s])
                self._act_means(values[2 * n_w + n_s :])
            self._records.append(Record(self._step, self._epoch, tuple(sizes.values()), values))
        self._act_count = {}

    @staticmethod
    def _weight_norms(weights: list[torch.Tensor], out: torch.Tensor) -> None:
        """weight_grad then weight_norm of ``weights`` into ``out``: one fused norm over the gradients and weights."""
        grads = [w.grad for w in weights if w.grad is not None]
        if len(grads) == len(weights):
            if weights:
                torch.stack(torch._foreach_norm(grads + weights, 2, dtype=F64), out=out)
            return
        norms = torch._foreach_norm(grads + weights, 2, dtype=F64)
        torch.stack(norms[len(grads) :], out=out[len(weights) :])
        out[: len(weights)].fill_(math.nan)
        for k, g in zip([k for k, w in enumerate(weights) if w.grad is not None], norms):
            out[k] = g

    def _signal_norms(self, out: torch.Tensor) -> None:
        if self._sig_buf is None:
            out.fill_(math.nan)
            return
        out.copy_(self._sig_buf[: len(out)])
        for k, seen in enumerate(self._sig_seen):
            if not seen:
                out[k] = math.nan

    def _act_means(self, out: torch.Tensor) -> None:
        """act_deriv then act_deriv_sq: each activation's sums over its element count (NaN: not run)."""
        n = len(out) // 2
        if not self._act_count:  # no activation ran with autograd this step (nor made a buffer)
            out.fill_(math.nan)
            return
        # Every activation has a layer_index, also one that so far ran only without autograd and so
        # never reached the buffer: make the buffer as long as the list.
        self._act_buf = _buffer(self._act_buf, 2 * n, out.device)
        sums, means = self._act_buf[: 2 * n].view(n, 2).T, out.view(2, n)
        if out.device.type == "cpu" and len(self._act_count) == n:
            counts = torch.tensor([self._act_count[i] for i in range(n)], dtype=F64)
            torch.div(sums, counts, out=means)
            return
        # Elsewhere one division per module by a Python number: no host-to-device copy (CUDA graphs capture this).
        means.copy_(sums)
        for i in range(n):
            if i in self._act_count:
                means[:, i].div_(self._act_count[i])
            else:
                means[:, i] = math.nan

    # -- replayed steps (used by resgrad.cudagraph only) ---------------------------
    # Under a CUDA graph a step's Python runs once, at capture: the record end_step()
    # makes then holds the graph's static output buffer, which every replay overwrites.
    # resgrad.cudagraph takes that record back and adds a copy of its values per replay.
    # So begin_step, the hooks and end_step must do device work only (no .item(), no host sync).

    _taken: Record | None = None  # the record take_record() removed: the layout add_record() copies

    def take_record(self, step: int) -> torch.Tensor | None:
        """Remove the record the last ``end_step()`` made for ``step`` and return its values; None if it made none."""
        if self._records and self._records[-1].step == step:
            self._taken = self._records.pop()
            return self._taken.values
        return None

    def add_record(self, step: int, epoch: int, values: torch.Tensor) -> None:
        """Record for ``step`` a copy of ``values``, laid out as the values :meth:`take_record` returned."""
        if self._taken is None:
            raise RuntimeError("add_record() copies the layout of a record take_record() removed; call that first.")
        self._records.append(dataclasses.replace(self._taken, step=step, epoch=epoch, values=values.clone()))

    # -- results ------------------------------------------------------------------

    def log_to(self, writer: torch.utils.tensorboard.SummaryWriter, step: int | None = None) -> None:
        """Write the last recorded step's norms to a TensorBoard ``SummaryWriter``.

        Tags as ``resgrad export`` names them (``weight_grad/<index>_<layer>``, ...), at that
        recorded step or at ``step``. Call it after ``end_step`` of a recorded step; it reads
        the norms on the host (one synchronisation).
        """
        frame = self.to_frame()
        if len(frame):
            last = frame[frame["step"] == frame["step"].iloc[-1]]
            for tag, value in scalars(last).items():
                writer.add_scalar(tag, value, int(last["step"].iloc[0]) if step is None else step)

    def to_frame(self, until_step: int | None = None) -> pd.DataFrame:
        """A tidy frame: ``step, epoch, layer_index, layer, quantity, norm``.

        ``quantity`` is one of :data:`resgrad.records.QUANTITIES`; ``norm`` holds the
        norm, or for ``act_deriv`` and ``act_deriv_sq`` the mean of σ′ and of σ′². A layer first run at a
        later step has rows from that step on.

        Args:
            until_step: keep only steps <= this one.
        """
        records = [r for r in self._records if until_step is None or r.step <= until_step]
        return records_frame(records, {"layers": self.layers, "blocks": self.blocks, "activations": self.activations})
