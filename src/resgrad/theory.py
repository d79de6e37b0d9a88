"""The mean-field prediction of the backward gain of every weighted layer and every block, from the weights.

Going back through a net, the backward signal g meets transposed convs and activation
derivatives. For a signal that is white (its entries uncorrelated, of equal variance) and
independent of the layer (Schoenholz et al. 2017; Yang & Schoenholz 2017), the expected
squared gains are, exactly for the layer's actual weights W (docs/theory.md derives them):

- a conv (C_out output channels, k×k taps d = (dy, dx), any stride and padding):
  ``A = (1/C_out) Σ_{o,i,d} W[o,i,d]² c_dy c_dx`` with ``c_d`` the fraction of output
  positions at which tap d reads a real input pixel, not padding (:func:`resgrad.geometry.tap_coverage`).
  With the tap energies ``T[d] = Σ_{o,i} W[o,i,d]²`` this is ``‖W‖²/C_out · b`` with the
  border factor ``b = Σ_d T[d] c_dy c_dx / Σ_d T[d]`` (:func:`resgrad.geometry.border_factor`). A linear
  layer has ``A = ‖W‖²/out_features``. It is the fan-in times the mean *square* weight,
  not the fan-out times the variance.
- an activation: ``E = mean σ′(z)²`` over its inputs (the recorder's ``act_deriv_sq``);
- a conv followed by BatchNorm: ``A = (1/C_out) Σ_o β_o R_o`` with ``R_o = Σ_{i,d} W[o,i,d]² c_d``
  and ``β_o = γ_o² / (var_o + ε)`` (:func:`bn_beta`: the batch variance in train mode, with a
  factor ``1 − (1 + r(2 − r))/m`` for the mean and x̂ the batch statistics take out; the
  running variance in eval mode);
- a plain block (conv1 → act1 → conv2 → act2): ``G² = E2 · A2 · E1 · A1``;
- a residual block: ``G² = E2 · (S + A2 · E1 · A1)``, ``S`` = 1 for the identity,
  ``C_in/C_out`` for option A's subsampled zero-padded shortcut (exactly: with E2 over the
  first C_in channels of act2, which the recorder does not record, so E2 stands in for it),
  ``A_S`` of the 1×1 conv for option B.

The gains are the square roots. :func:`resgrad.geometry.net_geometry` reads a model's structure
(which conv and activation belongs to which block, strides, channels, map sizes);
:func:`predict` turns the recorded ``weight_norm`` and ``act_deriv_sq`` of a run into
predicted gains at every recorded step. Everything is in float64 numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from resgrad.errors import UsageError
from resgrad.geometry import SHORTCUTS, NetGeometry, tap_coverage

LAYER_COLUMNS = ["step", "layer_index", "layer", "weight_norm", "border", "predicted_gain"]
BLOCK_COLUMNS = [
    "step",
    "block_index",
    "block",
    "shortcut",
    "approx",
    "e1",
    "e2",
    "gain_conv1",
    "gain_conv2",
    "shortcut_sq",
    "predicted_gain",
]


# ---------------------------------------------------------------- one layer


def tap_energy(weight: torch.Tensor) -> np.ndarray:
    """``T[dy, dx] = Σ_{o,i} W[o,i,dy,dx]²`` of a conv weight (C_out, C_in, kh, kw), or ``[[‖W‖²]]`` of a linear one."""
    w = weight.detach().to("cpu", torch.float64)
    w = w.reshape(*w.shape, 1, 1) if w.dim() == 2 else w
    return (w**2).sum(dim=(0, 1)).numpy()


def conv_factor(weight: torch.Tensor, stride: int, padding: int, size_in: int, beta: np.ndarray | None = None) -> float:
    """The exact ``A = (1/C_out) Σ_o β_o Σ_{i,d} W[o,i,d]² c_dy c_dx`` of a square conv on a square map (β = 1 without BN).

    A linear weight (out, in) gives ``Σ_o β_o ‖W_o‖² / out``.
    """
    w = weight.detach().to("cpu", torch.float64)
    w = w.reshape(*w.shape, 1, 1) if w.dim() == 2 else w
    c = torch.from_numpy(tap_coverage(w.shape[-1], stride, padding, size_in))
    rows = (w**2 * (c[:, None] * c[None, :])).sum(dim=(1, 2, 3)).numpy()  # R_o
    if beta is not None:
        rows = rows * np.asarray(beta, dtype=np.float64)
    return float(rows.mean())


def bn_beta(gamma: np.ndarray, var: np.ndarray, eps: float, batch_elements: int | None = None) -> np.ndarray:
    """Per channel, the expected squared gain of BatchNorm2d's backward for a white signal.

    Eval mode (``batch_elements`` None): ``γ²/(var + ε)`` exactly, with ``var`` the running variance.
    Train mode: ``var`` the biased batch variance of the channel over its ``batch_elements`` = N·H·W
    values; the backward then also takes out the signal's mean and its component along x̂, which
    leaves ``1 − (1 + r(2 − r))/m`` of a white signal, r = var/(var + ε).
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    beta = gamma**2 / (var + eps)
    if batch_elements is None:
        return beta
    r = var / (var + eps)
    return beta * (1.0 - (1.0 + r * (2.0 - r)) / batch_elements)


def layer_gain(weight_norm: np.ndarray | float, out_channels: int, border: np.ndarray | float) -> np.ndarray:
    """``√A = ‖W‖ · √(b / C_out)``, formed without squaring ‖W‖ (no underflow at 1e-200)."""
    return np.asarray(weight_norm, dtype=np.float64) * np.sqrt(np.asarray(border, dtype=np.float64) / out_channels)


def block_gain(
    shortcut: str,
    gain_conv1: np.ndarray | float,
    gain_conv2: np.ndarray | float,
    e1: np.ndarray | float,
    e2: np.ndarray | float,
    shortcut_sq: np.ndarray | float | None = None,
) -> np.ndarray:
    """The predicted gain √G² of a block from its conv gains √A1, √A2 and its activations' E1, E2.

    Plain (``shortcut`` "none"): ``√(E2·A2·E1·A1)``; residual: ``√(E2·(S + A2·E1·A1))`` with
    ``shortcut_sq`` = S: 1 for "identity" (the default there), C_in/C_out for "pad", A_S for "conv".
    """
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}.")
    branch = np.asarray(gain_conv1, dtype=np.float64) * np.asarray(gain_conv2, dtype=np.float64) * np.sqrt(e1)
    if shortcut == "none":
        return np.sqrt(e2) * branch
    if shortcut_sq is None:
        if shortcut != "identity":
            raise ValueError(f"a {shortcut!r} shortcut needs its squared gain shortcut_sq.")
        shortcut_sq = 1.0
    return np.sqrt(e2) * np.hypot(np.sqrt(shortcut_sq), branch)


def not_predicted(geometry: NetGeometry) -> str | None:
    """Why :func:`predict` cannot work from the recorded statistics of this net; None when it can."""
    if any(b.norm for b in geometry.blocks):
        return (
            "batch norm: its gain γ²/(batch variance + ε) per channel needs γ and the batch variance of every "
            "BatchNorm input at each recorded step, which the recorder does not record"
        )
    if not geometry.blocks:
        return "no block"
    return None


# ---------------------------------------------------------------- over the recorded steps


@dataclass(frozen=True)
class TapShape:
    """A layer's border factor where its weights are known (e.g. step 0 and after the last update), linear in between.

    Before the first and after the last known step the nearest known factor holds.
    """

    steps: tuple[int, ...]
    factors: tuple[float, ...]

    def at(self, steps: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(steps, dtype=np.float64), self.steps, self.factors)


def tap_shapes(geometry: NetGeometry, states: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, TapShape]:
    """Per layer, the :class:`TapShape` from the weights of ``states`` ({step: state_dict}, the step the weights were used at)."""
    known = sorted(states)
    return {
        name: TapShape(tuple(known), tuple(g.border(tap_energy(states[s][f"{name}.weight"])) for s in known))
        for name, g in geometry.layers.items()
    }


def _wide(stats: pd.DataFrame, quantity: str, value: str) -> pd.DataFrame:
    """step × layer name table of one recorded quantity."""
    part = stats[stats["quantity"] == quantity]
    return part.pivot_table(index="step", columns="layer", values=value, aggfunc="first", dropna=False)


def predict(
    geometry: NetGeometry,
    stats: pd.DataFrame,
    shapes: Mapping[str, TapShape] | None = None,
    value: str = "norm",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicted gains at every recorded step of one run, from its recorded ``weight_norm`` and ``act_deriv_sq``.

    Args:
        geometry: from :func:`net_geometry` of the run's model.
        stats: the run's tidy records (``step``, ``layer_index``, ``layer``, ``quantity`` and the value
            in column ``value``), as ``grad_norms.parquet`` holds them.
        shapes: per layer, its border factor over steps (:func:`tap_shapes`); a layer without one
            takes equal tap energies.
        value: the column holding the recorded values (``grad_norm`` in a :class:`~resgrad.report.sweepdata.Sweep`).

    Returns:
        ``(layers, blocks)``: per step and weighted layer :data:`LAYER_COLUMNS` (``predicted_gain`` = √A);
        per step and block :data:`BLOCK_COLUMNS` (``approx``: option A with a change of shape, see
        :attr:`BlockGeometry.approx`). A statistic missing at a step gives NaN there.

    Raises:
        UsageError: the net has batch norm (:func:`not_predicted`), or ``stats`` has no ``weight_norm``
            or ``act_deriv_sq`` (runs recorded before resgrad recorded them).
    """
    why = not_predicted(geometry)
    if why:
        raise UsageError(f"the gain of this net is not predicted: {why}.")
    missing = [q for q in ("weight_norm", "act_deriv_sq") if not (stats["quantity"] == q).any()]
    if missing:
        raise UsageError(
            f"the records hold no {' and no '.join(missing)}: the run was recorded before resgrad recorded it."
        )
    shapes = shapes or {}
    norms = stats[(stats["quantity"] == "weight_norm") & stats["layer"].isin(geometry.layers)]
    steps = norms["step"].to_numpy()
    border = np.empty(len(norms))
    out_channels = np.empty(len(norms))
    for name, rows in norms.groupby("layer").indices.items():
        g = geometry.layers[name]
        border[rows] = shapes[name].at(steps[rows]) if name in shapes else g.border()
        out_channels[rows] = g.out_channels
    layers = pd.DataFrame(
        {
            "step": steps,
            "layer_index": norms["layer_index"].to_numpy(),
            "layer": norms["layer"].to_numpy(),
            "weight_norm": norms[value].to_numpy(dtype=np.float64),
            "border": border,
        }
    )
    layers["predicted_gain"] = layer_gain(layers["weight_norm"], out_channels, border)
    layers = layers.sort_values(["step", "layer_index"]).reset_index(drop=True)

    gain = layers.pivot_table(index="step", columns="layer", values="predicted_gain", aggfunc="first", dropna=False)
    sq = _wide(stats, "act_deriv_sq", value)
    index = gain.index.union(sq.index)
    gain, sq = gain.reindex(index), sq.reindex(index)

    def column(frame: pd.DataFrame, name: str | None) -> np.ndarray:
        return frame[name].to_numpy(dtype=np.float64) if name in frame.columns else np.full(len(index), math.nan)

    parts = []
    for i, b in enumerate(geometry.blocks):
        g1, g2, e1, e2 = column(gain, b.conv1), column(gain, b.conv2), column(sq, b.act1), column(sq, b.act2)
        s = (
            b.shortcut_sq(column(gain, b.shortcut_conv))
            if b.shortcut == "conv"
            else np.full(len(index), b.shortcut_sq())
        )
        parts.append(
            pd.DataFrame(
                {
                    "step": index.to_numpy(),
                    "block_index": i,
                    "block": b.name,
                    "shortcut": b.shortcut,
                    "approx": b.approx,
                    "e1": e1,
                    "e2": e2,
                    "gain_conv1": g1,
                    "gain_conv2": g2,
                    "shortcut_sq": s,
                    "predicted_gain": block_gain(b.shortcut, g1, g2, e1, e2, s),
                }
            )
        )
    blocks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=BLOCK_COLUMNS)
    return layers[LAYER_COLUMNS], blocks.sort_values(["step"], kind="stable").reset_index(drop=True)[BLOCK_COLUMNS]
