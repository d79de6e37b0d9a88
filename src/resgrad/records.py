"""The recorder's records: what one recorded step holds, the tidy frame of many, and their scalar names.

A :class:`Record` keeps one recorded step's values as one float64 tensor on the device, laid out
as ``weight_grad`` of the first ``n_layers`` layers, ``activation_grad`` of every watched block,
then ``act_deriv`` of the first ``n_acts`` activation modules. :func:`records_frame` copies them to
the host once and lays them out as a tidy frame (:data:`COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

COLUMNS = ["step", "epoch", "layer_index", "layer", "quantity", "norm"]
QUANTITIES = ("weight_grad", "activation_grad", "act_deriv")


@dataclass
class Record:
    """One recorded step: weight norms of the first ``n_layers`` layers, the block norms, ``n_acts`` act_deriv."""

    step: int
    epoch: int
    n_layers: int
    n_acts: int
    values: torch.Tensor  # float64, on the device


def records_frame(
    records: Sequence[Record], layers: Sequence[str], blocks: Sequence[str], activations: Sequence[str]
) -> pd.DataFrame:
    """The tidy frame of ``records`` (``step, epoch, layer_index, layer, quantity, norm``): one host transfer.

    Args:
        records: in step order.
        layers, blocks, activations: the names, in ``layer_index`` order, that the records' values follow.
    """
    if not records:
        return pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["int64", "int64", "int64", "object", "object", "float64"])}
        )
    values = torch.cat([r.values for r in records]).cpu().numpy()  # the one host transfer
    n_blocks = len(blocks)
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for r in records:
        key = (r.n_layers, r.n_acts)
        if key not in shapes:
            counts = [r.n_layers, n_blocks, r.n_acts]
            shapes[key] = (
                np.array(layers[: r.n_layers] + blocks + activations[: r.n_acts], dtype=object),
                np.concatenate([np.arange(n) for n in counts]).astype("int64"),
                np.repeat(np.array(QUANTITIES, dtype=object), counts),
            )
    parts = [shapes[(r.n_layers, r.n_acts)] for r in records]
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
