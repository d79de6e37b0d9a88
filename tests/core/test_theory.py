"""resgrad.theory: the predicted backward gain against Monte-Carlo estimates through fresh layers, in float64.

The Monte-Carlo estimate puts a white Gaussian signal g at a layer's (or block's) output and
takes E‖∂(g·out)/∂x‖² / E‖g‖² from autograd, over many draws: what the prediction claims, found
without its formulas. Stated tolerances (measured/predicted gain):

- one conv (and conv + BatchNorm): 3 %. The formula is exact in expectation for the layer's actual
  weights; 8 draws of 16 images leave < 1 % of noise (0.994–1.006 over 16 draws of seed and shape).
- one block, map 8×8, 16 channels: 8 %. The prediction treats the signal inside the block as white;
  after conv2ᵀ it is not quite (the border pixels get less), so plain blocks come out 0.99–1.06× their
  prediction (26 seeds, ReLU and sigmoid), residual ones 0.99–1.01×. Leaving out the border factor
  would put plain blocks ~16 % off, leaving out E2 residual ReLU blocks ~40 %.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from resgrad.errors import UsageError
from resgrad.geometry import border_factor, net_geometry, tap_coverage
from resgrad.gradients import GradientRecorder
from resgrad.models import PlainBlock, ResidualBlock, build_model
from resgrad.theory import (
    TapShape,
    block_gain,
    bn_beta,
    conv_factor,
    layer_gain,
    not_predicted,
    predict,
    tap_energy,
    tap_shapes,
)

F64 = torch.float64


def _monte_carlo(module: nn.Module, x: torch.Tensor, draws: int = 8, seed: int = 0) -> float:
    """E‖J(x)ᵀg‖² / E‖g‖² for white Gaussian g at the output: the squared gain, by autograd."""
    gen = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_(True)
    y = module(x)
    num = den = 0.0
    for _ in range(draws):
        g = torch.randn(y.shape, dtype=F64, generator=gen)
        (gx,) = torch.autograd.grad(y, x, g, retain_graph=True)
        num += float((gx**2).sum())
        den += float((g**2).sum())
    return num / den


# ---------------------------------------------------------------- one layer


def test_tap_coverage_by_hand() -> None:
    np.testing.assert_allclose(tap_coverage(3, 1, 1, 7), [6 / 7, 1, 6 / 7])
    np.testing.assert_allclose(tap_coverage(3, 2, 1, 28), [13 / 14, 1, 1])  # 28 -> 14
    np.testing.assert_allclose(tap_coverage(3, 2, 1, 7), [3 / 4, 1, 3 / 4])  # 7 -> 4 reads pixel 7 = padding
    np.testing.assert_allclose(tap_coverage(1, 2, 0, 14), [1.0])  # option B's 1x1 conv
    np.testing.assert_allclose(tap_coverage(1, 1, 0, 1), [1.0])  # a linear layer
    with pytest.raises(ValueError, match="does not fit"):
        tap_coverage(5, 1, 0, 3)


def test_border_factor_weights_each_tap_by_its_energy() -> None:
    c = tap_coverage(3, 1, 1, 7)
    energy = np.zeros((3, 3))
    energy[1, 1] = 5.0  # the centre tap never reads padding
    assert border_factor(energy, c, c) == 1.0
    energy[0, 0] = 5.0  # a corner tap reads a real pixel at (6/7)² of the positions
    assert border_factor(energy, c, c) == pytest.approx((1 + (6 / 7) ** 2) / 2, rel=1e-15)
    assert border_factor(None, c, c) == pytest.approx((19 / 21) ** 2, rel=1e-15)  # equal energies: mean(c)²
    assert border_factor(np.zeros((3, 3)), c, c) == pytest.approx((19 / 21) ** 2, rel=1e-15)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "size", "shift"),
    [
        (16, 16, 3, 1, 7, 0.0),  # border taps read padding in 2 of 7 rows and columns
        (16, 16, 3, 1, 7, 0.05),  # a mean weight of 0.05 counts: the second moment, not the variance
        (8, 16, 3, 2, 14, 0.0),  # stride 2, C -> 2C: fan-in, not fan-out
        (8, 16, 1, 2, 14, 0.0),  # option B's 1x1 shortcut conv
        (16, 16, 3, 1, 28, 0.0),
    ],
)
def test_conv_gain_matches_monte_carlo(
    c_in: int, c_out: int, kernel: int, stride: int, size: int, shift: float
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False).to(F64)  # PyTorch's default init
    with torch.no_grad():
        conv.weight += shift
    x = torch.randn(16, c_in, size, size, dtype=F64)
    measured = _monte_carlo(conv, x)
    predicted = conv_factor(conv.weight, stride, kernel // 2, size)
    assert math.sqrt(measured / predicted) == pytest.approx(1.0, abs=0.03)
    # The same factor from the layer's norm and border factor, as predict() forms it from the records.
    b = border_factor(tap_energy(conv.weight), *(2 * [tap_coverage(kernel, stride, kernel // 2, size)]))
    assert layer_gain(float(conv.weight.detach().norm()), c_out, b) ** 2 == pytest.approx(predicted, rel=1e-12)
    # n·Var(W) with n the fan-out C_out·k² (the first guess) misses the mean weight and, at stride 2, the
    # fan-in; no border factor misses the padding: each is further off than the tolerance where it applies.
    w = conv.weight.detach()
    fan_out = c_out * kernel * kernel * float(w.var())
    if shift or stride == 2 and kernel == 3:
        assert abs(math.sqrt(measured / fan_out) - 1) > 0.1
    if size == 7:
        assert abs(math.sqrt(measured / (float((w**2).sum()) / c_out)) - 1) > 0.03


def test_linear_gain_is_the_squared_norm_over_the_outputs() -> None:
    torch.manual_seed(1)
    fc = nn.Linear(64, 10).to(F64)
    measured = _monte_carlo(fc, torch.randn(256, 64, dtype=F64), draws=64)
    assert conv_factor(fc.weight, 1, 0, 1) == pytest.approx(float((fc.weight.detach() ** 2).sum()) / 10, rel=1e-12)
    assert math.sqrt(measured / conv_factor(fc.weight, 1, 0, 1)) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_and_batch_norm_gain_matches_monte_carlo(mode: str) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 16, 3, 1, 1, bias=False).to(F64)
    bn = nn.BatchNorm2d(16).to(F64)
    with torch.no_grad():  # per-channel gains far from 1, so that a per-channel mistake shows
        bn.weight.uniform_(0.3, 2.0)
        bn.running_var.uniform_(0.05, 1.0)
    net = nn.Sequential(conv, bn).train(mode == "train")
    x = torch.randn(16, 8, 8, 8, dtype=F64)
    measured = _monte_carlo(net, x)
    gamma = bn.weight.detach().numpy()
    if mode == "train":
        z = conv(x).detach()  # the batch statistics BatchNorm normalises by
        beta = bn_beta(gamma, z.var(dim=(0, 2, 3), unbiased=False).numpy(), bn.eps, z.numel() // z.shape[1])
    else:
        beta = bn_beta(gamma, bn.running_var.numpy(), bn.eps)
    assert math.sqrt(measured / conv_factor(conv.weight, 1, 1, 8, beta)) == pytest.approx(1.0, abs=0.03)
    assert abs(math.sqrt(measured / conv_factor(conv.weight, 1, 1, 8)) - 1) > 0.5  # BatchNorm's gain matters


def test_bn_beta_by_hand() -> None:
    np.testing.assert_allclose(bn_beta(np.array([2.0]), np.array([3.0]), 1.0), [1.0])
    r = 3.0 / 4.0  # var / (var + eps): the batch statistics take out 1 + r(2 - r) of m white dimensions
    np.testing.assert_allclose(bn_beta(np.array([2.0]), np.array([3.0]), 1.0, 10), [1 - (1 + r * (2 - r)) / 10])


def test_gains_hold_at_the_edges_of_float64() -> None:
    torch.manual_seed(3)
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    base = conv_factor(w, 1, 1, 5)
    for scale in (1e-20, 1e15):
        assert conv_factor(w * scale, 1, 1, 5) == pytest.approx(base * scale**2, rel=1e-12)
    # From the recorded norm without squaring it: 1e-200 would underflow squared, 1e200 overflow.
    for norm in (1e-200, 1e-40, 1e30, 1e200):
        assert layer_gain(norm, 4, 0.25) == pytest.approx(norm / 4, rel=1e-15)
    assert block_gain("none", 1e-150, 1e-150, 0.25, 0.25)[()] == pytest.approx(0.25e-300, rel=1e-14)
    assert block_gain("identity", 1e100, 1e100, 1.0, 1.0)[()] == pytest.approx(1e200, rel=1e-14)  # no 1e400 on the way


# ---------------------------------------------------------------- blocks


def _recorded_prediction(block: nn.Module, x: torch.Tensor) -> float:
    """The block's predicted gain from what the recorder records in one step (weight_norm, act_deriv_sq)."""
    with GradientRecorder(block, 1, modules=[]) as rec:
        rec.begin_step(0, 0)
        block(x).square().sum().backward()
        rec.end_step()
    _, blocks = predict(net_geometry(block, tuple(x.shape[1:])), rec.to_frame())
    assert len(blocks) == 1
    return float(blocks["predicted_gain"].iloc[0])


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("cls", [PlainBlock, ResidualBlock])
def test_block_gain_matches_monte_carlo(cls: type, activation: str) -> None:
    torch.manual_seed(4)
    block = cls(16, 16, 1, "none", activation, "A", bias=True).to(F64)
    x = torch.randn(16, 16, 8, 8, dtype=F64)  # what the previous block's activation gives out
    x = {"relu": x.abs(), "tanh": torch.tanh(x), "sigmoid": torch.sigmoid(x)}[activation]
    measured = math.sqrt(_monte_carlo(block, x))
    assert measured / _recorded_prediction(block, x) == pytest.approx(1.0, abs=0.08)


def test_block_gain_formulas_by_hand() -> None:
    assert block_gain("none", 0.5, 0.4, 0.25, 0.36)[()] == pytest.approx(0.6 * 0.5 * 0.4 * 0.5, rel=1e-15)
    assert block_gain("identity", 0.5, 0.4, 0.25, 0.36)[()] == pytest.approx(math.sqrt(0.36 * (1 + 0.01)), rel=1e-15)
    assert block_gain("pad", 0.5, 0.4, 0.25, 0.36, 0.5)[()] == pytest.approx(math.sqrt(0.36 * 0.51), rel=1e-15)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        block_gain("B", 0.5, 0.4, 0.25, 0.36)
    with pytest.raises(ValueError, match="needs its squared gain"):
        block_gain("pad", 0.5, 0.4, 0.25, 0.36)


# ---------------------------------------------------------------- structure and records


def test_geometry_of_a_depth_net() -> None:
    geo = net_geometry(build_model("residual", depth=8, width=4))
    sizes = {n: (g.out_channels, g.kernel, g.stride, g.size_in) for n, g in geo.layers.items()}
    assert sizes == {
        "stem": (4, 3, 1, 28),
        "stage1.0.conv1": (4, 3, 1, 28),
        "stage1.0.conv2": (4, 3, 1, 28),
        "stage2.0.conv1": (8, 3, 2, 28),
        "stage2.0.conv2": (8, 3, 1, 14),
        "stage3.0.conv1": (16, 3, 2, 14),
        "stage3.0.conv2": (16, 3, 1, 7),
        "fc": (10, 1, 1, 1),
    }
    assert [(b.name, b.shortcut, b.approx, b.input_elements) for b in geo.blocks] == [
        ("stage1.0", "identity", False, 4 * 28 * 28),
        ("stage2.0", "pad", True, 4 * 28 * 28),
        ("stage3.0", "pad", True, 8 * 14 * 14),
    ]
    assert geo.blocks[1].shortcut_sq() == 0.5
    b = net_geometry(build_model("residual", depth=8, width=4, shortcut="B"))
    assert [(x.shortcut, x.shortcut_conv) for x in b.blocks][1] == ("conv", "stage2.0.shortcut.0")
    assert "stage2.0.shortcut.0" in b.layers and "stage2.0.shortcut.0" not in geo.layers
    plain = net_geometry(build_model("plain", depth=8, width=4, shortcut="B"))
    assert {x.shortcut for x in plain.blocks} == {"none"} and "stage2.0.shortcut.0" not in plain.layers
    seed = net_geometry(build_model("seed-residual"))
    assert [(x.name, x.shortcut, x.input_elements) for x in seed.blocks] == [
        ("block1", "identity", 16 * 12 * 12),
        ("block2", "identity", 32 * 4 * 4),
    ]


def test_batch_norm_nets_are_refused_with_the_reason() -> None:
    geo = net_geometry(build_model("plain", depth=8, width=4, norm="batch"))
    assert "batch variance" in not_predicted(geo)
    with pytest.raises(UsageError, match="batch norm"):
        predict(geo, pd.DataFrame(columns=["step", "layer_index", "layer", "quantity", "norm"]))


def test_tap_shape_interpolates_between_known_steps() -> None:
    shape = TapShape((0, 300), (0.9, 0.84))
    np.testing.assert_allclose(shape.at(np.array([-5, 0, 150, 300, 400])), [0.9, 0.9, 0.87, 0.84, 0.84])


def _synthetic_records(geo_blocks: list[str], steps: list[int]) -> pd.DataFrame:
    rows = []
    for step in steps:
        for i, (name, v) in enumerate({"stem": 1.0, "b.conv1": 2.0, "b.conv2": 3.0, "fc": 4.0}.items()):
            rows.append(dict(step=step, layer_index=i, layer=name, quantity="weight_norm", norm=v * (1 + step)))
        for i, (name, v) in enumerate({"stem_act": 0.9, "b.act1": 0.5, "b.act2": 0.4}.items()):
            rows.append(dict(step=step, layer_index=i, layer=name, quantity="act_deriv_sq", norm=v))
    return pd.DataFrame(rows)


class _Net(nn.Module):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.stem_act = nn.ReLU()
        self.b = cls(4, 4)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.stem_act(self.stem(x))).flatten(1))


@pytest.mark.parametrize("cls", [PlainBlock, ResidualBlock])
def test_predict_from_records_by_hand(cls: type) -> None:
    net = _Net(cls)
    geo = net_geometry(net, (1, 7, 7))
    records = _synthetic_records(["b"], [0, 2])
    shapes = {"b.conv1": TapShape((0, 4), (0.5, 0.9))}  # conv1 known at steps 0 and 4; the others: equal taps
    layers, blocks = predict(geo, records, shapes)
    equal = (1 - 2 / 21) ** 2  # mean coverage (6/7 + 1 + 6/7)/3, squared
    at2 = layers[layers["step"] == 2].set_index("layer")
    assert at2.loc["stem", "predicted_gain"] == pytest.approx(3.0 * math.sqrt(equal / 4), rel=1e-12)
    assert at2.loc["b.conv1", "border"] == pytest.approx(0.7, rel=1e-12)
    assert at2.loc["b.conv1", "predicted_gain"] == pytest.approx(6.0 * math.sqrt(0.7 / 4), rel=1e-12)
    assert at2.loc["fc", "predicted_gain"] == pytest.approx(12.0 / math.sqrt(10), rel=1e-12)
    b2 = blocks[blocks["step"] == 2].iloc[0]
    a1, a2 = 36.0 * 0.7 / 4, 81.0 * equal / 4
    expected = 0.4 * a2 * 0.5 * a1 if cls is PlainBlock else 0.4 * (1 + a2 * 0.5 * a1)
    assert b2["predicted_gain"] == pytest.approx(math.sqrt(expected), rel=1e-12)
    assert b2["shortcut"] == ("none" if cls is PlainBlock else "identity") and not b2["approx"]
    # A run recorded before act_deriv_sq existed is refused, not predicted from nothing.
    with pytest.raises(UsageError, match="no act_deriv_sq"):
        predict(geo, records[records["quantity"] != "act_deriv_sq"])


def test_tap_shapes_from_two_states() -> None:
    torch.manual_seed(5)
    net = _Net(PlainBlock)
    geo = net_geometry(net, (1, 7, 7))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    end = {k: v.clone() for k, v in start.items()}
    end["b.conv1.weight"][:, :, 1, 1] *= 3  # more energy in the centre tap: a larger border factor
    shapes = tap_shapes(geo, {0: start, 10: end})
    c = tap_coverage(3, 1, 1, 7)
    assert shapes["b.conv1"].factors[0] == pytest.approx(border_factor(tap_energy(start["b.conv1.weight"]), c, c))
    assert shapes["b.conv1"].factors[1] > shapes["b.conv1"].factors[0]
    assert shapes["b.conv2"].factors[0] == shapes["b.conv2"].factors[1]
    assert shapes["fc"].factors == (1.0, 1.0)
