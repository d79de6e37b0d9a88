"""Per-layer gradient-norm recording with hooks, cheap enough to leave on.

:class:`GradientRecorder` records, at the steps its schedule picks, the quantities of
:data:`resgrad.records.QUANTITIES` (what each one means: :mod:`resgrad.records`): gradient and
weight norms of every weighted layer and of every parameter, the backward signal at the output of
every block, and the mean σ′ and σ′² of every activation module. Norms are formed in float64 from
the tensors as they are (float32, bfloat16, float16), so they neither underflow nor overflow: a
norm is 0 only when every element is 0. They are computed on the device and stay there as one
small float64 tensor per recorded step; nothing is copied to the host until
:meth:`GradientRecorder.to_frame`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from resgrad.activations import Sums, reads_output
from resgrad.errors import UsageError
from resgrad.norms import F64, buffer64, norm64, norms64
from resgrad.records import Record, records_frame, scalars
from resgrad.schedules import Schedule, as_schedule
from resgrad.watched import activation_modules, default_signal_modules, parameters_once, weighted_modules


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

    What each quantity means, what NaN and 0 mean, and how layers, shared modules, gradient
    accumulation and ``torch.no_grad()`` evaluations count: :mod:`resgrad.records`.
    ``begin_step``/``end_step`` need the hooks: outside the ``with`` block they raise
    ``RuntimeError`` rather than record half the quantities.

    Args:
        model: the model to watch.
        schedule: record every k steps (int), at the steps in an iterable, or where
            a callable ``schedule(step)`` is true.
        modules: qualified names of the modules whose output gradient is the
            backward signal; by default every module whose class sets
            ``resgrad_block = True`` (resgrad's blocks, :class:`resgrad.models.Block`).
        include_norm_layers: also record the weight gradient of normalisation layers.
        activation_types: further module types that are elementwise activations, for
            ``act_deriv`` by reverse-mode AD (every elementwise activation of ``torch.nn``
            is known; see :mod:`resgrad.activations`).

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
        activation_types: Iterable[type[nn.Module]] = (),
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
        self._weight_candidates = weighted_modules(model, include_norm_layers)
        self._act_modules = activation_modules(model, activation_types)
        self._busy = False  # inside an activation hook: the AD path runs module.forward again
        # Every parameter once (param_grad), its other names if tied; looked at again after a registration.
        self.params, params, self.tied = parameters_once(model)
        self._params: list[nn.Parameter | None] = list(params)  # None: no longer in the model
        self._params_dirty = False
        self._pos = {id(p): k for k, p in enumerate(params)}
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
        for name, module, sums in self._act_modules:
            hook = self._act_hook(name, sums)
            if reads_output(module, sums):
                self._handles.append(module.register_forward_hook(hook))
            else:  # in place: z is read before the call writes over it
                self._handles.append(module.register_forward_pre_hook(lambda m, i, hook=hook: hook(m, i, None)))
        for register in (  # global: any registration anywhere sets a flag, looked at in end_step
            nn.modules.module.register_module_parameter_registration_hook,
            nn.modules.module.register_module_module_registration_hook,
        ):
            self._handles.append(register(lambda *args: setattr(self, "_params_dirty", True)))
        self._params_dirty = True  # what was registered between __init__ and now
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
                    buf = self._sig_buf = buffer64(self._sig_buf, len(self._signal_modules), grad.device)
                    slot = buf[index]
                    # hypot: the root of the sum of squares over several outputs, without over/underflow
                    torch.hypot(slot, norm64(grad).to(buf.device), out=slot)
                    self._sig_seen[index] = True

                output.register_hook(store)

        return hook

    def _act_hook(self, name: str, sums: Sums) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
            if self._busy:
                return
            i = self._act_index.get(name)
            if i is None:
                i = self._act_index[name] = len(self.activations)
                self.activations.append(name)
            z = inputs[0]
            if output is None:  # before the call: it builds a graph if z or the module's parameters need grad
                grad = torch.is_grad_enabled() and (
                    z.requires_grad or any(p.requires_grad for p in module.parameters())
                )
            else:
                grad = isinstance(output, torch.Tensor) and output.requires_grad
            if not (self._active and grad):
                return
            self._busy = True
            try:
                # [Σσ′, Σσ′²] in float64, or a count that is both (σ′ is 0 or 1)
                s = sums(module, z, output)  # type: ignore[arg-type]
            finally:
                self._busy = False
            buf = self._act_buf = buffer64(self._act_buf, 2 * i + 2, z.device)
            buf[2 * i : 2 * i + 2].add_(s.to(buf.device))
            self._act_count[i] = self._act_count.get(i, 0) + z.numel()

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

    def end_step(self, loss_scale: float | torch.Tensor | None = None, grads_scaled: bool = False) -> None:
        """Call after ``backward()`` and before the gradients are cleared.

        Args:
            loss_scale: the factor the loss was multiplied by before ``backward()`` (a
                ``GradScaler``'s scale, a tensor: no host sync); the backward signal is divided by it.
            grads_scaled: the ``.grad`` are still multiplied by ``loss_scale`` (not yet unscaled):
                divide weight_grad and param_grad by it too.
        """
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
        if self._params_dirty:
            self._refresh_params()
        weights = [m.weight for m in self._layer_modules]
        grads = [p.grad if p is not None else None for p in self._params]
        n_w, n_s, n_a, n_p = len(weights), len(self._signal_modules), len(self.activations), len(grads)
        sizes = (n_w, n_w, n_s, n_a, n_a, n_p)  # QUANTITIES
        present = [*weights, *(p for p in self._params if p is not None), self._sig_buf, self._act_buf]
        device = next((t.device for t in present if t is not None), torch.device("cpu"))
        if sum(sizes):
            # Few torch calls, written into one new tensor: between a step's big kernels each small op
            # costs tens of µs on the CPU.
            with torch.no_grad():
                values = torch.empty(sum(sizes), dtype=F64, device=device)
                weight_grad, weight_norm, signal, act, param_grad = values.split([n_w, n_w, n_s, 2 * n_a, n_p])
                norms64([(grads, param_grad), (weights, weight_norm)])  # one fused norm
                self._weight_grads(param_grad, weight_grad)
                self._signal_norms(signal)
                if loss_scale is not None:
                    for part in (signal, weight_grad, param_grad) if grads_scaled else (signal,):
                        part.div_(loss_scale)
                self._act_means(act)
            self._records.append(Record(self._step, self._epoch, sizes, values))
        self._act_count = {}

    def _refresh_params(self) -> None:
        """After a registration: a new parameter name takes the next free index, a known one follows its parameter."""
        names, params, self.tied = parameters_once(self.model)
        now = dict(zip(names, params))
        self._params = [now.pop(n, None) for n in self.params]
        self.params += list(now)
        self._params += list(now.values())
        self._pos = {id(p): k for k, p in enumerate(self._params) if p is not None}
        self._params_dirty = False

    def _weight_grads(self, param_grad: torch.Tensor, out: torch.Tensor) -> None:
        """weight_grad: each layer's weight's param_grad (NaN if its weight is no parameter of the model)."""
        ks = [self._pos.get(id(m.weight)) for m in self._layer_modules]
        if None not in ks:
            if ks:
                torch.stack([param_grad[k] for k in ks], out=out)
            return
        out.fill_(math.nan)
        for i, k in enumerate(ks):
            if k is not None:
                out[i] = param_grad[k]

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
        self._act_buf = buffer64(self._act_buf, 2 * n, out.device)
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
        last = self.last_frame()
        if len(last):
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
        return records_frame(records, self._names())

    def last_frame(self) -> pd.DataFrame:
        """The frame of the last recorded step only (empty before the first): one host transfer, however many steps."""
        return records_frame(self._records[-1:], self._names())

    def _names(self) -> dict[str, list[str]]:
        return {"layers": self.layers, "blocks": self.blocks, "activations": self.activations, "params": self.params}
