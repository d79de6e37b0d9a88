"""Exact reductions for the recorder: float64 norms and sums of float32, bfloat16 or float16 tensors.

:func:`norm64` forms ‖t‖₂ with float64's range and precision, so that a gradient of elements
around 1e-23 (or 1e30) is measured as it is rather than underflowing (or overflowing) in a
float32 sum of squares. :func:`sum64` sums a tensor the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

F64 = torch.float64


_ROW = 256  # float32 sums of this many terms stay within 2e-7 of float64, also equal terms (4096: 2.5e-6)
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


def flat(t: torch.Tensor) -> torch.Tensor:
    """t's elements as one dimension, in memory order: no copy of a contiguous or channels-last tensor.

    For reductions that ignore element order; torch's own reductions copy a channels-last tensor
    to contiguous first (``aminmax``: a third of a recorded channels-last step's overhead).
    """
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # norms and sums ignore element order
    return t.reshape(-1)


def _norm64_cpu(t: torch.Tensor) -> torch.Tensor:
    """The float32 fast path of :func:`norm64`, with the float64 fallback."""
    elements = flat(t)
    cut = elements.numel() - elements.numel() % _ROW
    rows = torch.linalg.vector_norm(elements[:cut].view(-1, _ROW), dim=1)
    if cut < elements.numel():
        rows = torch.cat([rows, torch.linalg.vector_norm(elements[cut:]).reshape(1)])
    norm = torch.linalg.vector_norm(rows, dtype=F64)
    # .item() costs no device sync on the CPU. inf: some square overflowed; NaN: a NaN element (kept below).
    if _SAFE <= norm.item() < math.inf:
        return norm
    return torch.linalg.vector_norm(t, dtype=F64)


def sum64(t: torch.Tensor) -> torch.Tensor:
    """The sum of t's elements as a float64 0-d tensor on t's device.

    On the CPU a float32 tensor is summed in float32 rows of :data:`_ROW` elements, combined in
    float64 (a float64 sum of a float32 tensor converts it first, about 10x slower): within ~1e-7 of
    Σ|t| of the float64 sum. Elsewhere in float64.
    """
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() < _ROW:
        return t.sum(dtype=F64)
    elements = flat(t)
    cut = elements.numel() - elements.numel() % _ROW
    rows = elements[:cut].view(-1, _ROW).sum(1)
    if cut < elements.numel():
        rows = torch.cat([rows, elements[cut:].sum().reshape(1)])
    return rows.sum(dtype=F64)


def norms64(groups: Sequence[tuple[Sequence[torch.Tensor | None], torch.Tensor]]) -> None:
    """For each ``(tensors, out)``: ‖t‖₂ of every tensor into ``out`` in float64, NaN for None; one fused call for all."""
    present = [t for tensors, _ in groups for t in tensors if t is not None]
    norms = torch._foreach_norm(present, 2, dtype=F64) if present else []
    start = 0
    for tensors, out in groups:
        ks = [k for k, t in enumerate(tensors) if t is not None]
        part, start = norms[start : start + len(ks)], start + len(ks)
        if len(ks) == len(tensors):
            if ks:
                torch.stack(part, out=out)
            continue
        out.fill_(math.nan)
        for k, norm in zip(ks, part):
            out[k] = norm


def buffer64(buf: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """``buf`` if it is on ``device`` and long enough, else a float64 buffer of zeros there, holding ``buf``'s values."""
    if buf is not None and len(buf) >= size and buf.device == device:
        return buf
    grown = torch.zeros(max(size, 2 * len(buf) if buf is not None else size), dtype=F64, device=device)
    if buf is not None:
        grown[: len(buf)] = buf.to(device)
    return grown
