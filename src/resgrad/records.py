"""The recorder's records: what one recorded step holds, the tidy frame of many, and their scalar names.

The quantities (:data:`QUANTITIES`, column ``quantity``; the value in column ``norm``), each
keyed by the names of one kind (:data:`KEYED_BY`), numbered by ``layer_index``:

- ``weight_grad``: ‖∂L/∂W‖₂ of every weighted layer (a module owning a ``weight`` parameter
  whose forward runs; normalisation layers only if asked), numbered in the order the forward
  pass first runs them;
- ``weight_norm``: ‖W‖₂ of the same layers' weights, as the step's forward pass used them;
- ``activation_grad``: ‖∂L/∂h‖₂ of the output h of every watched block: the backward signal;
- ``act_deriv`` and ``act_deriv_sq``: the mean of σ′(z) and of σ′(z)² over the input elements z
  of every elementwise activation module (:mod:`resgrad.activations`), in first-forward order;
- ``param_grad``: ‖∂L/∂p‖₂ of every parameter of the model, also one used only through a
  functional call (``nn.MultiheadAttention``'s ``in_proj_weight``), in ``named_parameters()``
  order; a tied parameter once, under the first name ``named_parameters()`` gives it (the
  recorder's ``tied`` lists its other names).

What one recorded step (``begin_step`` … ``end_step``) records:

- a module whose forward runs several times in the step (shared weights): its
  ``activation_grad`` is the root of the sum of squares over the gradients of all its
  outputs, and its ``act_deriv`` the mean over the input elements of all its calls;
- several ``backward()`` calls before ``end_step`` (gradient accumulation):
  ``activation_grad`` accumulates over them the same way, so it is the norm of the
  whole batch's ∂L/∂h, as ``weight_grad`` and ``param_grad`` read the accumulated ``.grad``;
- a module first run after recording began is recorded from the first recorded step it
  runs in, with the next free ``layer_index``: the set of layers may grow; so may the
  parameters: one registered later joins ``param_grad`` at the next recorded step;
- NaN means "not measured": a weight or parameter whose ``.grad`` is None, a watched module
  whose output got no gradient, an activation module not run with autograd on or given a
  NaN input; 0 is a measured zero (every element 0);
- only forward passes that build a graph (output requires grad) count, so an evaluation
  under ``torch.no_grad()`` inside a recorded step changes nothing.

A :class:`Record` keeps one recorded step's values as one float64 tensor on the device, laid out
quantity after quantity in :data:`QUANTITIES` order, ``sizes[k]`` values of quantity k each.
:func:`records_frame` copies them to the host once and lays them out as a tidy frame (:data:`COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

COLUMNS = ["step", "epoch", "layer_index", "layer", "quantity", "norm"]
QUANTITIES = ("weight_grad", "weight_norm", "activation_grad", "act_deriv", "act_deriv_sq", "param_grad")
# What each quantity is recorded for: its names, in layer_index order, are the recorder's list of that kind.
KEYED_BY = {
    "weight_grad": "layers",
    "weight_norm": "layers",
    "activation_grad": "blocks",
    "act_deriv": "activations",
    "act_deriv_sq": "activations",
    "param_grad": "params",
}


@dataclass
class Record:
    """One recorded step: ``sizes[k]`` values of ``QUANTITIES[k]`` each, one after the other, in ``values``."""

    step: int
    epoch: int
    sizes: tuple[int, ...]
    values: torch.Tensor  # float64, on the device


def records_frame(records: Sequence[Record], names: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """The tidy frame of ``records`` (``step, epoch, layer_index, layer, quantity, norm``): one host transfer.

    Args:
        records: in step order.
        names: per kind of :data:`KEYED_BY` (``layers``, ``blocks``, ``activations``, ``params``), the names in
            ``layer_index`` order; a record of ``sizes[k]`` values of a quantity names the first ``sizes[k]``.
    """
    if not records:
        return pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["int64", "int64", "int64", "object", "object", "float64"])}
        )
    values = torch.cat([r.values for r in records]).cpu().numpy()  # the one host transfer
    shapes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for r in records:
        if r.sizes not in shapes:
            lists = [list(names[KEYED_BY[q]][:n]) for q, n in zip(QUANTITIES, r.sizes)]
            shapes[r.sizes] = (
                np.array([n for part in lists for n in part], dtype=object),
                np.concatenate([np.arange(n) for n in r.sizes]).astype("int64"),
                np.repeat(np.array(QUANTITIES, dtype=object), r.sizes),
            )
    parts = [shapes[r.sizes] for r in records]
    sizes = [len(p[0]) for p in parts]
    return pd.DataFrame(
        {
            "step": np.repeat([r.step for r in records], sizes).astype("int64"),
            "epoch": np.repeat([r.epoch for r in records], sizes).astype("int64"),
            "layer_index": np.concatenate([p[1] for p in parts]),
            "layer": np.concatenate([p[0] for p in parts]),
            "quantity": np.concatenate([p[2] for p in parts]),
            "norm": values,
        },
        columns=COLUMNS,
    )


def scalar_tag(quantity: str, index: int, layer: str) -> str:
    """``weight_grad/003_stage1.0.conv2``: the index zero-padded so that a logger sorts layers in order."""
    return f"{quantity}/{index:03d}_{layer}"


def scalars(frame: pd.DataFrame) -> dict[str, float]:
    """``{tag: value}`` of the rows of a :meth:`GradientRecorder.to_frame` frame (of one step), tags by :func:`scalar_tag`.

    The names TensorBoard export and the loggers use; zero, NaN and inf are kept as they are.
    """
    return {
        scalar_tag(q, i, layer): float(v)
        for q, i, layer, v in zip(frame["quantity"], frame["layer_index"], frame["layer"], frame["norm"])
    }
