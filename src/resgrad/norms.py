"""Exact reductions for the recorder: float64 norms of gradients and sums of activation derivatives.

:func:`norm64` forms ‖t‖₂ with float64's range and precision from a float32, bfloat16 or
float16 tensor, so that a gradient of elements around 1e-23 (or 1e30) is measured as it is
rather than underflowing (or overflowing) in a float32 sum of squares.
:func:`sum64` sums one the same way. :data:`ACTIVATION_DERIVATIVES` gives, per activation module
type, the sums of σ′(z) and σ′(z)² over the elements of one call, computed so that they do not
cancel to 0 where σ′ is tiny.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

F64 = torch.float64


_ROW = 4096  # float32 sums of this many squares stay within ~1e-8 of float64
_SAFE = 2.0**-30  # a float32 norm at least this large lost < 1e-7 to squares below float32's normal range


def norm64(t: torch.Tensor) -> torch.Tensor:
    """‖t‖₂ as a float64 0-d tensor on t's device, with float64's range and precision.

    On the CPU a float32 tensor takes a fast path that reads it once: float32 norms of rows of
    :data:`_ROW` elements, combined in float64, kept when the result shows that no square overflowed
    and none that underflowed mattered; otherwise (and on other devices) the norm is formed in float64.
    """
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() < _ROW:
        return torch.linalg.vector_norm(t, dtype=F64)
    return _norm64_cpu(t)


def _norm64_cpu(t: torch.Tensor) -> torch.Tensor:
    """The float32 fast path of :func:`norm64`, with the float64 fallback."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # the norm ignores element order: flatten in memory order, without a copy
    flat = t.reshape(-1)
    cut = flat.numel() - flat.numel() % _ROW
    rows = torch.linalg.vector_norm(flat[:cut].view(-1, _ROW), dim=1)
    if cut < flat.numel():
        rows = torch.cat([rows, torch.linalg.vector_norm(flat[cut:]).reshape(1)])
    norm = torch.linalg.vector_norm(rows, dtype=F64)
    # .item() costs no device sync on the CPU. inf: some square overflowed; NaN: a NaN element (kept below).
    if _SAFE <= norm.item() < math.inf:
        return norm
    return torch.linalg.vector_norm(t, dtype=F64)


def sum64(t: torch.Tensor) -> torch.Tensor:
    """The sum of t's elements as a float64 0-d tensor on t's device.

    On the CPU a float32 tensor is summed in float32 rows of :data:`_ROW` elements, combined in
    float64 (a float64 sum of a float32 tensor converts it first, about 10x slower); elsewhere in float64.
    """
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() < _ROW:
        return t.sum(dtype=F64)
    flat = t.reshape(-1)
    cut = flat.numel() - flat.numel() % _ROW
    rows = flat[:cut].view(-1, _ROW).sum(1)
    if cut < flat.numel():
        rows = torch.cat([rows, flat[cut:].sum().reshape(1)])
    return rows.sum(dtype=F64)


# -- activation derivatives -----------------------------------------------------------------

_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}
_INF_BITS = {
    torch.float64: 0x7FF0000000000000,
    torch.float32: 0x7F800000,
    torch.bfloat16: 0x7F80,
    torch.float16: 0x7C00,
}
_TINY_MEAN = 2.0**-100  # a float32 σ′ whose mean is at least this lost nothing that matters to elements below 1e-38


def _relu_deriv(inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Σσ′ of one ReLU call, a count (σ′ is 0 or 1, so Σσ′² is the same), read from the output.

    relu(z) > 0 exactly where z > 0, so the output serves also when an in-place ReLU has written
    over its input. On the CPU, when no element is NaN or −0.0 (their bit patterns are the only
    non-zero ones that are not positive), counting the non-zero bit patterns reads the tensor once and
    allocates nothing (a float comparison is ~10x slower); else the count of relu(z) > 0, NaN if any is NaN.
    """
    out = output.detach()
    if out.device.type == "cpu" and out.dtype in _INF_BITS and out.numel():
        bits = out.view(_SAME_SIZE_INT[out.element_size()])
        lo, hi = torch.aminmax(bits)
        if lo.item() >= 0 and hi.item() <= _INF_BITS[out.dtype]:  # .item() costs no device sync on the CPU
            return torch.count_nonzero(bits)
    return (out > 0).sum(dtype=F64).masked_fill_(torch.isnan(out).any(), math.nan)  # no host sync (CUDA graphs)


def _tanh_prime(z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    # 4σ(2z)σ(−2z) = sech²(z): no cancellation where 1 − tanh²(z) is 0 (|z| > 9 in float32), and σ is
    # vectorised where cosh is not (~10x faster on the CPU).
    a = torch.mul(z, 2)
    b = torch.sigmoid(a)
    return b.mul_(a.neg_().sigmoid_()).mul_(4)


def _sigmoid_prime(z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    # σ(z)·σ(−z) rather than σ(z)·(1 − σ(z)), which cancels to 0 for z > 17 in float32.
    return torch.neg(z).sigmoid_().mul_(torch.sigmoid(z) if out is None else out)


def deriv_sums(
    prime: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], z: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """[Σσ′(z), Σσ′(z)²] over the elements of one call, in float64: ``prime(z, out)`` gives σ′ elementwise.

    On the CPU σ′ is formed in float32 (from a float32, bfloat16 or float16 z), and again in float64
    when its mean is below 2⁻¹⁰⁰ (so that σ′ below float32's range does not vanish); elsewhere in
    float64. A NaN in z makes both sums NaN.
    """
    z = z.detach()
    if z.device.type == "cpu" and z.dtype != F64:
        d = prime(z.float(), _same(out, torch.float32))
        total = sum64(d)
        if not total.item() < z.numel() * _TINY_MEAN:
            return torch.stack([total, norm64(d).square()])
    d = prime(z.double(), _same(out, F64))
    return torch.stack([d.sum(), torch.linalg.vector_norm(d).square()])


def _same(out: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The output where it is in ``dtype``; None where it was rounded more coarsely (then σ′ does not use it)."""
    return out.detach() if out is not None and out.dtype == dtype else None


def _elementwise(
    prime: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda inputs, output: deriv_sums(prime, inputs, output)


# Activation module types whose derivative is recorded: type -> f(input, output) of one call, giving
# [Σσ′, Σσ′²] over its elements in float64, or one count where σ′ is 0 or 1 (then Σσ′² = Σσ′).
ACTIVATION_DERIVATIVES: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: _relu_deriv,
    nn.Tanh: _elementwise(_tanh_prime),
    nn.Sigmoid: _elementwise(_sigmoid_prime),
}
