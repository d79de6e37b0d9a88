"""Exact reductions for the recorder: float64 norms of gradients and sums of activation derivatives.

:func:`norm64` forms ‖t‖₂ with float64's range and precision from a float32, bfloat16 or
float16 tensor, so that a gradient of elements around 1e-23 (or 1e30) is measured as it is
rather than underflowing (or overflowing) in a float32 sum of squares.
:data:`ACTIVATION_DERIVATIVES` gives, per activation module type, the sum of σ′(z) over the
elements of one call, computed so that it does not cancel to 0 where σ′ is tiny.
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


_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _relu_deriv(inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # From the output, which an in-place ReLU has written over its input: relu(z) > 0 exactly where z > 0.
    # Counting the non-zero bit patterns reads the tensor once and allocates nothing (a float count_nonzero
    # is 50x slower on the CPU). Only an input of exactly -0.0 or NaN, which gives a non-zero pattern, would
    # count as positive.
    out = output.detach()
    return torch.count_nonzero(out.view(_SAME_SIZE_INT[out.element_size()]))


def _tanh_deriv(inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # sech²(z) keeps its precision where 1 − tanh²(z) would cancel to 0 (|z| > 9 in float32).
    return torch.cosh(_as_float(inputs)).pow(-2).sum(dtype=F64)


def _sigmoid_deriv(inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # σ(z)·σ(−z) rather than σ(z)·(1 − σ(z)), which cancels to 0 for z > 17 in float32.
    return (_as_float(output) * torch.sigmoid(-_as_float(inputs))).sum(dtype=F64)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t if t.dtype in (torch.float32, F64) else t.float()


# Activation module types whose derivative is recorded: type -> sum of σ'(z) over the elements of one call.
ACTIVATION_DERIVATIVES: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: _relu_deriv,
    nn.Tanh: _tanh_deriv,
    nn.Sigmoid: _sigmoid_deriv,
}
