"""resgrad's recorder inside a Lightning ``Trainer``: :class:`GradientRecorderCallback`.

    trainer = L.Trainer(callbacks=[GradientRecorderCallback()])

At the optimizer steps its schedule picks (by default every ``Trainer(log_every_n_steps=...)``),
the callback records what :class:`~resgrad.gradients.GradientRecorder` records and hands it to
every logger of the trainer (TensorBoard, CSV, wandb alike) as one ``log_metrics`` call, under the
tags ``resgrad export`` writes (``weight_grad/003_stage1.0.conv2``, :func:`resgrad.records.scalar_tag`),
at ``step = trainer.global_step``. :meth:`GradientRecorderCallback.to_frame` gives the tidy frame.

Which gradient it records, as Lightning 2.x runs a step (``on_before_optimizer_step``):

- one record per optimizer step: with ``accumulate_grad_batches=k`` the gradient accumulated over
  the k micro-batches (Lightning divides each loss by k), the backward signal over all k as well;
- ``precision="16-mixed"``: unscaled (Lightning unscales before the hook; the backward signal,
  which the loss scale multiplied, is divided by the scaler's scale); a step the scaler then skips
  is recorded with the inf or NaN it found. ``"bf16-mixed"`` has no scale;
- gradient clipping: **before** clipping (Lightning clips after the hook); with norm clipping the
  optimizer steps with each gradient times min(1, clip / total norm), the total norm being the
  root of the sum of squares of ``param_grad``;
- DDP: ``weight_grad`` and ``param_grad`` are the all-reduced gradients, the same on every rank;
  ``activation_grad`` and ``act_deriv`` are each rank's own (its share of the batch, its local
  loss). Rank 0 logs; each rank's callback keeps its own frame.

Lightning is an optional dependency (``pip install 'resgrad[lightning]'``); without it, importing
this module raises ``UsageError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from resgrad.errors import UsageError
from resgrad.gradients import GradientRecorder
from resgrad.records import records_frame, scalars
from resgrad.schedules import Schedule, every

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError:
    raise UsageError(
        "resgrad.integrations.lightning needs Lightning, which is not installed: "
        "pip install 'resgrad[lightning]' (make setup installs it)."
    ) from None


class GradientRecorderCallback(Callback):
    """Record gradient norms with :class:`~resgrad.gradients.GradientRecorder` and log them through the trainer.

    Args:
        schedule: which optimizer steps to record (as for ``GradientRecorder``); by default every
            ``trainer.log_every_n_steps``.
        module: the attribute path of the submodule to record (``"model"``: names relative to
            ``pl_module.model``, as resgrad's own runs name them); by default the LightningModule.
        modules, include_norm_layers, activation_types: as for ``GradientRecorder``.
        log: hand each recorded step to the trainer's loggers (rank 0 only).
    """

    def __init__(
        self,
        schedule: int | Schedule | Iterable[int] | None = None,
        module: str | None = None,
        modules: Sequence[str] | None = None,
        include_norm_layers: bool = False,
        activation_types: Iterable[type[nn.Module]] = (),
        log: bool = True,
    ) -> None:
        self.schedule = schedule
        self.module = module
        self.modules = modules
        self.include_norm_layers = include_norm_layers
        self.activation_types = tuple(activation_types)
        self.log = log
        self.recorder: GradientRecorder | None = None
        self._open = False  # begin_step called, end_step not yet: inside an optimizer step's micro-batches
        self._recording = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.recorder is not None:
            return
        try:
            target = pl_module if self.module is None else pl_module.get_submodule(self.module)
        except AttributeError:
            raise UsageError(f"the LightningModule has no submodule {self.module!r}.") from None
        schedule = every(trainer.log_every_n_steps) if self.schedule is None else self.schedule
        self.recorder = GradientRecorder(
            target, schedule, self.modules, self.include_norm_layers, self.activation_types
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            self.recorder.__enter__()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self.recorder is not None:
            self.recorder.remove()
        self._open = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The first micro-batch of an optimizer step: global_step counts the steps completed so far.
        if self.recorder is not None and not self._open:
            self._recording = self.recorder.begin_step(trainer.global_step, trainer.current_epoch)
            self._open = True

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # After the last micro-batch's backward, DDP's all-reduce and GradScaler.unscale_; before clipping.
        if self.recorder is None or not self._open:
            return  # a second optimizer in the same step: the first one's gradients are recorded
        self._open = False
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None
        # An optimizer that unscales inside its own step (fused): Lightning skipped unscale_, .grad is still scaled.
        self.recorder.end_step(scale, grads_scaled=bool(getattr(optimizer, "_step_supports_amp_scaling", False)))
        if self._recording and self.log and trainer.is_global_zero and trainer.loggers:
            metrics = scalars(self.recorder.last_frame())  # one host copy
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def to_frame(self, until_step: int | None = None) -> pd.DataFrame:
        """This rank's tidy frame (:meth:`GradientRecorder.to_frame`); empty before the first fit."""
        if self.recorder is None:
            return records_frame([], {})
        return self.recorder.to_frame(until_step)
