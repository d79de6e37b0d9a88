"""act_deriv and act_deriv_sq of every elementwise activation, against torch.func and mpmath in float64."""

from __future__ import annotations

import copy
import math

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgrad.activations import relu_counts, sums_for, vjp_sums
from resgrad.gradients import GradientRecorder


class Swish(nn.Module):
    """An activation resgrad does not know: x·σ(βx)."""

    def __init__(self, beta: float = 1.5) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


ACTIVATIONS = [
    nn.ReLU(),
    nn.ReLU(inplace=True),
    nn.Tanh(),
    nn.Sigmoid(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.SiLU(inplace=True),
    nn.Mish(),
    nn.LeakyReLU(0.1),
    nn.LeakyReLU(0.3, inplace=True),
    nn.ELU(),
    nn.ELU(alpha=0.5, inplace=True),
    nn.CELU(alpha=2.0),
    nn.SELU(),
    nn.Softplus(),
    nn.Softplus(beta=2.0, threshold=5.0),
    nn.ReLU6(),
    nn.ReLU6(inplace=True),
    nn.Hardtanh(-2.0, 1.5),
    nn.Hardswish(),
    nn.Hardsigmoid(),
    nn.Hardshrink(0.5),
    nn.Softshrink(0.5),
    nn.Threshold(0.5, 2.0),
    nn.LogSigmoid(),
    nn.Softsign(),
    nn.Tanhshrink(),
    nn.PReLU(3, init=0.2),  # a parameter per channel: reverse-mode AD
    Swish(),  # named to the recorder: reverse-mode AD
]
KINKS = [0.0, -0.0, 0.5, -0.5, 1.5, -2.0, 3.0, -3.0, 6.0, 5.0, 2.5]  # where some σ′ jumps, exactly


def _inputs(dtype: torch.dtype, center: float = 0.0, spread: float = 3.0, n: int = 3 * 4200) -> torch.Tensor:
    """(n/3, 3) values, channels on dim 1 (PReLU's), with every kink exactly; more than one 4096-row of float32."""
    gen = torch.Generator().manual_seed(0)
    z = center + spread * torch.randn(n, generator=gen, dtype=torch.float64)
    z[: len(KINKS)] = torch.tensor(KINKS, dtype=torch.float64)
    return z.to(dtype).view(-1, 3)


def _record(act: nn.Module, z: torch.Tensor) -> tuple[float, float]:
    """act_deriv and act_deriv_sq that one recorded call of ``act`` (in z's dtype) on ``z`` gives."""
    act = copy.deepcopy(act).to(z.dtype)
    leaf = z.detach().clone().requires_grad_()
    with GradientRecorder(act, modules=[], activation_types=[Swish]) as rec:
        rec.begin_step(0)
        act(leaf * 1).sum().backward()  # `* 1`: an in-place activation may not write over a leaf
        rec.end_step()
    got = rec.to_frame().set_index("quantity")["norm"]
    assert rec.activations == [""]  # the model is the activation
    return got["act_deriv"], got["act_deriv_sq"]


def _func_prime(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """σ′ elementwise by torch.func in float64 at the float64 values of ``z``: the VJP with ones, as backward has it."""
    m = copy.deepcopy(act).to(z.dtype).double()  # the parameters as the recorded call had them
    _, vjp = torch.func.vjp(lambda t: m(t.clone()), z.detach().double())
    (d,) = vjp(torch.ones_like(z, dtype=torch.float64))
    return d


@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_act_deriv_and_its_square_match_torch_func_in_float64(act: nn.Module, dtype: torch.dtype) -> None:
    """Random inputs and every kink (autograd's value there; −0.0 is 0)."""
    z = _inputs(dtype)
    prime = _func_prime(act, z)
    deriv, deriv_sq = _record(act, z)
    assert deriv == pytest.approx(prime.mean().item(), rel=1e-6, abs=1e-12)
    assert deriv_sq == pytest.approx(prime.square().mean().item(), rel=1e-6, abs=0)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_a_nan_input_makes_act_deriv_nan(act: nn.Module, dtype: torch.dtype) -> None:
    z = _inputs(dtype)
    for nan in (math.nan, -math.nan):  # both signs: the NaN an overflow makes on x86 has its sign bit set
        z[100, 1] = nan
        deriv, deriv_sq = _record(act, z)
        assert math.isnan(deriv) and math.isnan(deriv_sq), nan


# ---------------------------------------------------------------- where σ′ is tiny

_SELU_SCALE, _SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
_C = mp.sqrt(2 / mp.pi)


def _mp_function(act: nn.Module):
    """The activation as an mpmath function (on the side of 0 that the tail cases use)."""
    name = type(act).__name__
    return {
        "Tanh": mp.tanh,
        "Sigmoid": lambda x: 1 / (1 + mp.exp(-x)),
        "GELU": (lambda x: x * mp.ncdf(x))
        if getattr(act, "approximate", "") == "none"
        else (lambda x: x / 2 * (1 + mp.tanh(_C * (x + mp.mpf(0.044715) * x**3)))),
        "SiLU": lambda x: x / (1 + mp.exp(-x)),
        "Mish": lambda x: x * mp.tanh(mp.log1p(mp.exp(x))),
        "Softplus": lambda x: mp.log1p(mp.exp(x)),
        "ELU": lambda x: mp.exp(x) - 1,
        "CELU": lambda x: 2 * (mp.exp(x / 2) - 1),
        "SELU": lambda x: _SELU_SCALE * _SELU_ALPHA * (mp.exp(x) - 1),
        "LogSigmoid": lambda x: -mp.log1p(mp.exp(-x)),
    }[name]


TAILS = [  # (activation, center, spread): σ′ from about 1e-8 down to far below float32's range
    (nn.Tanh(), 12.0, 1.0),
    (nn.Tanh(), -60.0, 5.0),
    (nn.Sigmoid(), 25.0, 2.0),
    (nn.Sigmoid(), -120.0, 10.0),
    (nn.GELU(), -7.5, 0.5),
    (nn.GELU(), -25.0, 2.0),
    (nn.GELU(approximate="tanh"), -7.0, 0.5),
    (nn.GELU(approximate="tanh"), -10.0, 1.0),
    (nn.SiLU(), -25.0, 3.0),
    (nn.SiLU(), -120.0, 10.0),
    (nn.Mish(), -120.0, 10.0),
    (nn.Softplus(), -30.0, 3.0),
    (nn.ELU(), -120.0, 10.0),
    (nn.CELU(alpha=2.0), -200.0, 10.0),
    (nn.SELU(), -30.0, 3.0),
    (nn.LogSigmoid(), 100.0, 10.0),
]


@pytest.mark.parametrize(("act", "center", "spread"), TAILS, ids=[f"{a!r}{c:+g}" for a, c, _ in TAILS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_act_deriv_keeps_its_precision_where_sigma_prime_is_tiny(
    act: nn.Module, center: float, spread: float, dtype: torch.dtype
) -> None:
    """Against σ′ by mpmath at 400 digits (autograd's own formulas cancel there, also in float64).

    In float32 the argument of exp is rounded (2z, z/√2, u of tanh-GELU): σ′ ~ e^(−a) then carries
    a relative error of about a·6e-8, so the tolerance is 1e-5 there; float64 inputs are exact.
    """
    gen = torch.Generator().manual_seed(1)
    base = (center + spread * torch.randn(60, generator=gen, dtype=torch.float64)).to(dtype).double()
    f = _mp_function(act)
    with mp.workdps(400):  # f itself can be 1 − 1e-300: its derivative needs the digits
        prime = torch.tensor([float(mp.diff(f, mp.mpf(v))) for v in base.tolist()], dtype=torch.float64)
    assert (prime.abs() < 1e-5).all() and (prime != 0).all()
    z = base.to(dtype).repeat(100).view(-1, 3)  # 6000 elements: float32's row sums and norms, their fallbacks
    deriv, deriv_sq = _record(act, z)
    rel = 1e-5 if dtype == torch.float32 else 1e-9
    assert deriv == pytest.approx(prime.mean().item(), rel=rel, abs=0)
    assert deriv_sq == pytest.approx(prime.square().mean().item(), rel=2 * rel, abs=0)


# ---------------------------------------------------------------- which modules count


class NotElementwise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(-1)


class MyReLU(nn.ReLU):
    """A subclass that keeps ReLU's forward: a ReLU."""


class ShiftedReLU(nn.ReLU):
    """A subclass with its own forward: not taken for a ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - 1.0)


class Composite(nn.Module):
    """A named activation whose forward calls a child activation: the child counts once per real call (not again in
    the recorder's own call of ``forward`` for σ′)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inner(x)


def test_which_modules_get_act_deriv() -> None:
    assert sums_for(nn.Linear) is None and sums_for(nn.Softmax) is None and sums_for(nn.RReLU) is None
    assert sums_for(NotElementwise) is None and sums_for(NotElementwise, [NotElementwise]) is vjp_sums
    assert sums_for(MyReLU) is sums_for(nn.ReLU) and sums_for(nn.ReLU6) is sums_for(nn.Hardtanh)
    assert sums_for(ShiftedReLU) is None and sums_for(nn.PReLU) is vjp_sums
    assert sums_for(nn.MultiheadAttention) is None and sums_for(nn.GLU) is None


def test_a_named_composite_activation_and_its_child_are_each_counted_once_per_call() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), Composite(), nn.Linear(6, 2))
    x = torch.randn(7, 5)
    with GradientRecorder(model, modules=[], activation_types=[Composite]) as rec:
        rec.begin_step(0)
        model(x).sum().backward()
        rec.end_step()
    got = rec.to_frame().query("quantity == 'act_deriv'").set_index("layer")["norm"]
    assert list(got.index) == ["1.inner", "1"]  # in the order the calls finish
    z = model[0](x).detach()
    assert got["1"] == pytest.approx(_func_prime(Composite(), z).mean().item(), rel=1e-6)
    assert got["1.inner"] == pytest.approx(_func_prime(nn.Sigmoid(), z).mean().item(), rel=1e-6)


def test_an_unknown_module_is_not_taken_for_an_activation_unless_named() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Swish(), ShiftedReLU())
    for types, expected in (((), []), ((Swish, ShiftedReLU), ["1", "2"])):
        with GradientRecorder(model, modules=[], activation_types=types) as rec:
            rec.begin_step(0)
            model(torch.randn(2, 3)).sum().backward()
            rec.end_step()
        assert rec.activations == expected


def test_an_in_place_activation_gives_what_its_out_of_place_twin_gives_in_a_net() -> None:
    """Pre-hook (in place: z is gone after the call) and forward hook (z and y) on the same numbers."""
    x = torch.randn(8, 5)
    got = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 6), nn.SiLU(inplace=inplace), nn.Linear(6, 6), nn.ELU(inplace=inplace))
        with GradientRecorder(model, modules=[]) as rec:
            rec.begin_step(0)
            model(x).sum().backward()
            rec.end_step()
        got.append(rec.to_frame().query("quantity != 'weight_grad'"))
    assert list(got[0].layer) == list(got[1].layer)
    assert got[0].norm.tolist() == pytest.approx(got[1].norm.tolist(), rel=1e-12)


@pytest.mark.parametrize("special", [None, math.nan, -0.0])
def test_relu_counts_read_channels_last_outputs_in_memory_order(special: float | None) -> None:
    """A channels-last ReLU output (resgrad's CPU default without batch norm) is counted as its contiguous twin."""
    z = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    if special is not None:
        z[1, 2, 3, 4] = special
    out = torch.relu(z)
    last = out.contiguous(memory_format=torch.channels_last)
    assert not last.is_contiguous()
    count, expected = relu_counts(nn.ReLU(), z, last), relu_counts(nn.ReLU(), z, out)
    if special is not None and math.isnan(special):
        assert math.isnan(float(count)) and math.isnan(float(expected))
    else:
        assert float(count) == float(expected) == float((z > 0).sum())
