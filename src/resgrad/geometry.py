"""The structure of a resgrad net as the backward-gain prediction (:mod:`resgrad.theory`) sees it.

Which conv and activation modules make up each block, how the block's input reaches its output
(identity, option A's subsampled zero-padded shortcut, option B's 1×1 conv, or nothing: a plain
block), and each weighted layer's kernel, stride, padding and input map size, read from the model
with one forward pass (:func:`net_geometry`). Also the geometry of one conv's taps: the share of
output positions where each tap reads a real input pixel (:func:`tap_coverage`), and the share of
a weight's energy that does (:func:`border_factor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from resgrad.errors import UsageError
from resgrad.models import Block, PadShortcut, ResidualBlock

SHORTCUTS = ("none", "identity", "pad", "conv")  # none: a plain block (its shortcut module is never run)


def tap_coverage(kernel: int, stride: int, padding: int, size_in: int) -> np.ndarray:
    """``c_d`` for taps d = 0 … kernel−1: the fraction of output positions whose tap d reads a real input (not padding)."""
    size_out = (size_in + 2 * padding - kernel) // stride + 1
    if size_out < 1:
        raise ValueError(f"a kernel of {kernel} with padding {padding} does not fit an input of {size_in}.")
    where = np.arange(size_out)[:, None] * stride + np.arange(kernel)[None, :] - padding  # (out, tap)
    return ((where >= 0) & (where < size_in)).mean(axis=0)


def border_factor(energy: np.ndarray | None, coverage_y: np.ndarray, coverage_x: np.ndarray) -> float:
    """``b = Σ_d T[d] c_dy c_dx / Σ_d T[d]``: the share of the weights' energy that lands inside the input.

    ``energy`` None (or all zero) takes equal tap energies: ``b = mean(c_y) · mean(c_x)``.
    """
    both = np.outer(coverage_y, coverage_x)
    if energy is None or not np.sum(energy) > 0:
        return float(both.mean())
    energy = np.asarray(energy, dtype=np.float64)
    return float((energy * both).sum() / energy.sum())


# ---------------------------------------------------------------- a model's structure


@dataclass(frozen=True)
class LayerGeometry:
    """A weighted layer as the backward pass sees it: square kernel, stride and padding, and its input map size."""

    name: str
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    size_in: int = 1  # a linear layer: one "pixel"

    def coverage(self) -> np.ndarray:
        return tap_coverage(self.kernel, self.stride, self.padding, self.size_in)

    def border(self, energy: np.ndarray | None = None) -> float:
        """:func:`border_factor` of this layer for tap energies ``energy`` (None: equal energies)."""
        c = self.coverage()
        return border_factor(energy, c, c)


@dataclass(frozen=True)
class BlockGeometry:
    """Which layers and activation modules make up a block, and how its input reaches its output."""

    name: str
    shortcut: str  # one of SHORTCUTS
    conv1: str
    conv2: str
    act1: str
    act2: str
    shortcut_conv: str | None  # option B's 1x1 conv
    in_channels: int
    out_channels: int
    input_elements: int  # C_in · H · W of one sample's block input
    norm: bool  # BatchNorm after its convs

    @property
    def approx(self) -> bool:
        """Option A with a change of shape: E2 stands in for σ2′² over the first C_in channels (not recorded)."""
        return self.shortcut == "pad"

    def shortcut_sq(self, shortcut_conv_gain: float = math.nan) -> float:
        """S: 1 (identity), C_in/C_out (option A), A_S (option B, from its conv's gain), 0 (plain)."""
        return {"none": 0.0, "identity": 1.0, "pad": self.in_channels / self.out_channels}.get(
            self.shortcut, shortcut_conv_gain**2
        )


@dataclass(frozen=True)
class NetGeometry:
    layers: dict[str, LayerGeometry]  # every Conv2d and Linear the forward pass runs, by qualified name
    blocks: list[BlockGeometry]  # in module order


def _child(name: str, child: str) -> str:
    """The qualified name of ``child`` inside module ``name`` ("" for the root)."""
    return f"{name}.{child}" if name else child


def net_geometry(model: nn.Module, input_shape: Sequence[int] = (1, 28, 28)) -> NetGeometry:
    """The structure of ``model`` (a resgrad net), from one forward pass of a zero image of ``input_shape`` (MNIST's).

    The model is run in eval mode under ``torch.no_grad`` (BatchNorm's running statistics are not
    touched) and left in the mode it was in. Raises ``UsageError`` for a conv this prediction does
    not cover (non-square, dilated, grouped).
    """
    sizes: dict[str, int] = {}

    def size_of(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            sizes.setdefault(name, inputs[0].shape[-1])  # the first call's input; returns None: output unchanged

        return hook

    handles = [
        m.register_forward_hook(size_of(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    layers = {}
    for name, size in sizes.items():
        m = modules[name]
        if isinstance(m, nn.Linear):
            layers[name] = LayerGeometry(name, m.out_features)
            continue
        k, s, p = m.kernel_size, m.stride, m.padding
        if (
            isinstance(p, str)
            or len({*k}) > 1
            or len({*s}) > 1
            or len({*p}) > 1
            or m.groups != 1
            or m.dilation != (1, 1)
        ):
            raise UsageError(f"conv {name} is not square, ungrouped and undilated: its gain is not predicted.")
        layers[name] = LayerGeometry(name, m.out_channels, k[0], s[0], p[0], size)
    blocks = []
    for name, b in model.named_modules():
        if not isinstance(b, Block) or _child(name, "conv1") not in layers:
            continue
        if not isinstance(b, ResidualBlock):
            shortcut = "none"
        elif isinstance(b.shortcut, nn.Identity):
            shortcut = "identity"
        elif isinstance(b.shortcut, PadShortcut):
            shortcut = "pad"
        else:
            shortcut = "conv"
        size = layers[_child(name, "conv1")].size_in
        blocks.append(
            BlockGeometry(
                name=name,
                shortcut=shortcut,
                conv1=_child(name, "conv1"),
                conv2=_child(name, "conv2"),
                act1=_child(name, "act1"),
                act2=_child(name, "act2"),
                shortcut_conv=_child(name, "shortcut.0") if shortcut == "conv" else None,
                in_channels=b.conv1.in_channels,
                out_channels=b.conv1.out_channels,
                input_elements=b.conv1.in_channels * size * size,
                norm=isinstance(b.bn1, nn.BatchNorm2d),
            )
        )
    return NetGeometry(layers, blocks)
