"""σ′ of elementwise activation modules: the sums behind the recorder's ``act_deriv`` and ``act_deriv_sq``.

For one call of an activation module on input z, the recorder adds up [Σσ′(z), Σσ′(z)²] over z's
elements in float64 (:func:`sums_for` finds the function that gives them for a module type):

- ``nn.ReLU`` from its output, a count (σ′ is 0 or 1, so both sums are the count): the output
  serves also when an in-place ReLU has written over its input;
- every other elementwise activation of ``torch.nn`` by a formula in :data:`PRIMES` that keeps
  its precision where σ′ is tiny (no 1 − tanh², no 1 + erf: ``tanh`` as 4σ(2z)σ(−2z), GELU's Φ by
  erfc), checked against ``torch.func`` in float64;
- any other elementwise module (``torch.nn``'s ``PReLU``, or a type the caller names) by
  reverse-mode AD: σ′ is the vector-Jacobian product of ``module.forward`` at z with ones
  (``torch.func.vjp``), one more forward and backward of the module per call.

σ′ at a kink is the value PyTorch's autograd uses there (ReLU at 0: 0; LeakyReLU at 0: its slope;
ELU at 0: α; Hardswish at −3 and 3: 0 and 1). An input of −0.0 is 0. A NaN anywhere in z makes both
sums NaN ("not measured"). ``nn.RReLU`` is left out: in training its slope is drawn at random per
call, so no function of z gives its σ′.

On the CPU σ′ is formed in float32 (from a float32, bfloat16 or float16 z) and formed again in
float64 when its root mean square is below 2⁻⁶⁰, so that σ′ below float32's range (tanh at
|z| > 44) is measured as it is; on other devices in float64 (no host synchronisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resgrad.norms import F64, flat, norm64, sum64

# (module, z, y) -> σ′(z) elementwise, z and y in float32 or float64; y (the output) None when not at hand.
Prime = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# (module, input, output or None) -> [Σσ′, Σσ′²] in float64, or one count when σ′ is 0 or 1.
Sums = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}
_INF_BITS = {
    torch.float64: 0x7FF0000000000000,
    torch.float32: 0x7F800000,
    torch.bfloat16: 0x7F80,
    torch.float16: 0x7C00,
}
_TINY_RMS = 2.0**-60  # a float32 σ′ of at least this root mean square lost nothing that matters below 1e-38


def relu_counts(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor | None) -> torch.Tensor:
    """Σσ′ of one ReLU call, read from its output: the count of positive elements (NaN if one is NaN).

    relu(z) > 0 exactly where z > 0. On the CPU, when no element is NaN or −0.0 (the only non-zero
    bit patterns that are not positive), counting the non-zero bit patterns reads the tensor once and
    allocates nothing (a float comparison is ~10x slower); else the count of relu(z) > 0.
    """
    out = output.detach() if output is not None else torch.relu(inputs.detach())
    if out.device.type == "cpu" and out.dtype in _INF_BITS and out.numel():
        bits = flat(out).view(_SAME_SIZE_INT[out.element_size()])  # memory order: no copy of channels-last
        lo, hi = torch.aminmax(bits)
        if lo.item() >= 0 and hi.item() <= _INF_BITS[out.dtype]:  # .item() costs no device sync on the CPU
            return torch.count_nonzero(bits)
    return (out > 0).sum(dtype=F64).masked_fill_(torch.isnan(out).any(), math.nan)  # no host sync (CUDA graphs)


def deriv_sums(
    prime: Prime, module: nn.Module, z: torch.Tensor, out: torch.Tensor | None, keeps_nan: bool
) -> torch.Tensor:
    """[Σσ′(z), Σσ′(z)²] in float64 with σ′ from ``prime``; ``keeps_nan``: σ′ of a NaN is NaN by the formula itself."""
    z = z.detach()
    if not z.numel():
        return torch.zeros(2, dtype=F64, device=z.device)
    sums = None
    if z.device.type == "cpu" and z.dtype != F64:
        d = prime(module, z.float(), _same(out, torch.float32))
        norm = norm64(d)
        if not norm.item() < math.sqrt(z.numel()) * _TINY_RMS:  # NaN: kept
            sums = torch.stack([sum64(d), norm.square()])
    if sums is None:
        d = prime(module, z.double(), _same(out, F64))
        sums = torch.stack([d.sum(), torch.linalg.vector_norm(d).square()])
    return sums if keeps_nan else sums.masked_fill_(torch.isnan(z.amax()), math.nan)


def _same(out: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The output where it is in ``dtype``; None where it was rounded more coarsely (then σ′ does not use it)."""
    return out.detach() if out is not None and out.dtype == dtype else None


def _vjp_prime(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """σ′ by reverse-mode AD: the VJP of ``m.forward`` at z with ones (in m's parameters' dtype, if any).

    Reverse mode, not forward mode: at a kink it gives the value backward uses (forward-mode AD
    differs there for some modules: PReLU′(0) is 1 in forward mode, its slope in backward).
    """
    own = next((t for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()), None)
    z = z if own is None else z.to(own.dtype)
    _, vjp = torch.func.vjp(lambda t: m.forward(t.clone() if getattr(m, "inplace", False) else t), z)
    return vjp(torch.ones_like(z))[0].detach()


# -- σ′ of each activation, as autograd defines it at the kinks -----------------------------------


def _tanh(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    # 4σ(2z)σ(−2z) = sech²(z): no cancellation where 1 − tanh²(z) is 0, and σ is vectorised where cosh is not.
    a = torch.mul(z, 2)
    return torch.sigmoid(a).mul_(a.neg_().sigmoid_()).mul_(4)


def _sigmoid(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    # σ(z)·σ(−z) rather than σ(z)·(1 − σ(z)), which cancels to 0 for z > 17 in float32.
    return torch.neg(z).sigmoid_().mul_(torch.sigmoid(z) if y is None else y)


def _gelu(m: nn.GELU, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    if m.approximate == "tanh":  # y = z·σ(2u), u = c(z + k z³): y′ = σ(2u)·(1 + 2z·u′·σ(−2u))
        c, k = math.sqrt(2 / math.pi), 0.044715
        z2 = torch.square(z)
        two_u = z2.mul(k).add_(1).mul_(z).mul_(2 * c)
        two_du = z2.mul_(3 * k).add_(1).mul_(2 * c)
        return torch.neg(two_u).sigmoid_().mul_(two_du).mul_(z).add_(1).mul_(two_u.sigmoid_())
    # Φ(z) + z·φ(z), Φ by erfc (0.5·(1 + erf) cancels to 0 for z < −6 in float64)
    phi = torch.square(z).mul_(-0.5).exp_().mul_(1 / math.sqrt(2 * math.pi)).mul_(z)
    return torch.special.erfc(z * -math.sqrt(0.5)).mul_(0.5).add_(phi)


def _silu(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.neg(z).sigmoid_().mul_(z).add_(1).mul_(torch.sigmoid(z))  # σ(z)·(1 + z·σ(−z))


def _mish(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    t = torch.tanh(F.softplus(z))  # y = z·t: y′ = t + z·σ(z)·(1 − t²)
    return torch.square(t).neg_().add_(1).mul_(torch.sigmoid(z)).mul_(z).add_(t)


def _softplus(m: nn.Softplus, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    bz = z * m.beta  # linear (σ′ = 1) where βz exceeds the threshold
    return torch.sigmoid(bz).masked_fill_(bz > m.threshold, 1.0)


def _exp_family(scale: float, alpha: float, input_scale: float) -> Prime:
    """ELU, CELU and SELU: y = scale·z for z > 0, scale·α·(exp(input_scale·z) − 1) for z ≤ 0."""

    def prime(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.mul(z, input_scale).exp_().mul_(scale * alpha * input_scale).masked_fill_(z > 0, scale)

    return prime


def _elu(m: nn.ELU, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return _exp_family(1.0, m.alpha, 1.0)(m, z, y)


def _celu(m: nn.CELU, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return _exp_family(1.0, m.alpha, 1.0 / m.alpha)(m, z, y)


_selu = _exp_family(1.0507009873554804934193349852946, 1.6732632423543772848170429916717, 1.0)  # torch's constants


def _leaky_relu(m: nn.LeakyReLU, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.full_like(z, m.negative_slope).masked_fill_(z > 0, 1.0)


def _hardtanh(m: nn.Hardtanh, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:  # and ReLU6
    return ((z > m.min_val) & (z < m.max_val)).to(z.dtype)


def _hardswish(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.div(z, 3).add_(0.5).masked_fill_(z <= -3, 0.0).masked_fill_(z >= 3, 1.0)


def _hardsigmoid(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return ((z > -3) & (z < 3)).to(z.dtype).div_(6)


def _shrink(m: nn.Hardshrink | nn.Softshrink, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return (z.abs() > m.lambd).to(z.dtype)


def _threshold(m: nn.Threshold, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return (z > m.threshold).to(z.dtype)


def _logsigmoid(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.neg(z).sigmoid_()


def _softsign(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return z.abs().add_(1).pow_(-2)


def _tanhshrink(m: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.tanh(z).square_()  # 1 − sech²(z)


# type -> (σ′ formula, whether the formula itself makes σ′ of a NaN NaN)
PRIMES: dict[type[nn.Module], tuple[Prime, bool]] = {
    nn.Tanh: (_tanh, True),
    nn.Sigmoid: (_sigmoid, True),
    nn.GELU: (_gelu, True),
    nn.SiLU: (_silu, True),
    nn.Mish: (_mish, True),
    nn.Softplus: (_softplus, True),
    nn.ELU: (_elu, True),
    nn.CELU: (_celu, True),
    nn.SELU: (_selu, True),
    nn.LeakyReLU: (_leaky_relu, False),
    nn.Hardtanh: (_hardtanh, False),  # nn.ReLU6 is a Hardtanh(0, 6)
    nn.Hardswish: (_hardswish, True),
    nn.Hardsigmoid: (_hardsigmoid, False),
    nn.Hardshrink: (_shrink, False),
    nn.Softshrink: (_shrink, False),
    nn.Threshold: (_threshold, False),
    nn.LogSigmoid: (_logsigmoid, True),
    nn.Softsign: (_softsign, True),
    nn.Tanhshrink: (_tanhshrink, True),
}

# torch.nn's activation modules that are not elementwise (or not a function of their input: RReLU).
NOT_ELEMENTWISE = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU, nn.MultiheadAttention, nn.RReLU)


def _formula(prime: Prime, keeps_nan: bool) -> Sums:
    return lambda module, z, out: deriv_sums(prime, module, z, out, keeps_nan)


_SUMS: dict[type[nn.Module], Sums] = {nn.ReLU: relu_counts} | {t: _formula(*p) for t, p in PRIMES.items()}
vjp_sums: Sums = _formula(_vjp_prime, False)  # any other elementwise module


def sums_for(module_type: type[nn.Module], extra: Iterable[type[nn.Module]] = ()) -> Sums | None:
    """How to sum σ′ of a module of this type: None if it is not an elementwise activation.

    A subclass that keeps its parent's ``forward`` is its parent (``nn.ReLU6`` is a ``Hardtanh``).
    Reverse-mode AD serves the other elementwise activations of ``torch.nn`` and the types in ``extra``.
    """
    for cls in module_type.__mro__:
        if cls in _SUMS and getattr(cls, "forward", None) is getattr(module_type, "forward", None):
            return _SUMS[cls]
    if module_type in set(extra):
        return vjp_sums
    if module_type.__module__ == nn.ReLU.__module__ and not issubclass(module_type, NOT_ELEMENTWISE):
        return vjp_sums
    return None


def reads_output(module: nn.Module, sums: Sums) -> bool:
    """Whether σ′ is read after the call (input and output) rather than before it (input only, in-place modules)."""
    return sums is relu_counts or not getattr(module, "inplace", False)
