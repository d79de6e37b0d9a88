"""The recorder's records: what one recorded step holds, the tidy frame of many, and their scalar names.

A :class:`Record` keeps one recorded step's values as one float64 tensor on the device, laid out
quantity after quantity in :data:`QUANTITIES` order, ``sizes[k]`` values of quantity k each:
per weighted layer ``weight_grad`` then ``weight_norm``, per watched block ``activation_grad``,
per activation module ``act_deriv`` then ``act_deriv_sq``. :func:`records_frame` copies them to
the host once and lays them out as a tidy frame (:data:`COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

COLUMNS = ["step", "epoch", "layer_index", "layer", "quantity", "norm"]
QUANTITIES = ("weight_grad", "weight_norm", "activation_grad", "act_deriv", "act_deriv_sq")
# What each quantity is recorded for: its names, in layer_index order, are the recorder's list of that kind.
KEYED_BY = {
    "weight_grad": "layers",
    "weight_norm": "layers",
    "activation_grad": "blocks",
    "act_deriv": "activations",
    "act_deriv_sq": "activations",
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
        names: per kind of :data:`KEYED_BY` (``layers``, ``blocks``, ``activations``), the names in
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
