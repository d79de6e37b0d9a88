"""How a run computes: its dtype (autocast), its memory format, ``torch.compile``, and the evaluation pass.

None of these change what a run is (model, data, optimiser, schedule); they change how fast
its kernels run and, within float rounding, its numbers. ``docs/performance.md`` says how
far each moves them and what each pays on the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resgrad.config import DTYPES
from resgrad.data import Split
from resgrad.errors import UsageError, check_choice

log = logging.getLogger(__name__)

# Images per evaluation batch. On the CPU, batches of a few hundred images keep a layer's activations
# in the caches (1,000 ran 1.3-1.6x slower per image); on a GPU a few large batches, so that
# evaluating does not dominate a graphed run.
EVAL_BATCH = {"cpu": 250, "cuda": 5000}


def autocast(device_type: str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bfloat16 on ``device_type``, or nothing for float32.

    The cast cache is off: each weight is cast once per forward anyway, and the cache
    is unsafe under CUDA-graph capture (see torch.cuda.make_graphed_callables).
    """
    check_choice("dtype", dtype, DTYPES)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


def resolve_channels_last(channels_last: bool | None, device: torch.device, norm: str = "none") -> bool:
    """The run's memory format: as asked, or by default channels-last on the CPU for nets without batch norm.

    On the CPU oneDNN runs the nets' 3x3 convolutions of 8-64 channels faster on channels-last
    tensors: measured 1.1-1.55x a float32 training step of plain/residual-56 and 1.35x of seed-residual,
    and bfloat16 gains from it most (see docs/performance.md). Batch norm's channels-last CPU
    kernel rounds about 20x more than its contiguous one, and a deep net amplifies it: at init the
    weight gradients of batch-norm nets lie 1-4 % (depth 8) and over 100 % (plain-56) from float64,
    against 0.001-0.5 % and 7-17 % contiguous (``benchmarks/layout_accuracy.py``). So the default
    leaves those nets contiguous. On CUDA it is left to the user.
    """
    if channels_last is not None:
        return channels_last
    return device.type == "cpu" and norm != "batch"


# glibc's mallopt parameters: allocations up to this size come from the heap, and a free heap top up
# to this size stays with the process.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_ALLOC_MAX, HEAP_KEEP = 32 << 20, 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process instead of handing it back to the OS; True if it could.

    A CPU training step allocates and frees the same few-MB activations every step. By default
    glibc gives such blocks back to the OS (``mmap``/``munmap``, heap trimming) and takes them
    again the next step, and each page comes back through a page fault: up to 4,000 faults a step
    measured here, about a quarter of a seed-residual step's time in the kernel. Fixed thresholds
    (blocks up to 32 MiB from the heap, up to 1 GiB of free heap kept) remove them: the numbers are
    the same, the process keeps its peak memory. A no-op (False) where libc is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to set
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_ALLOC_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEEP))


def bfloat16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 kernels run natively here: on CUDA, or on a CPU with AVX-512-BF16 or AMX."""
    if device.type != "cpu":
        return True
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def check_dtype_speed(dtype: str, device: torch.device) -> None:
    """Warn when bfloat16 would run slower than float32: a CPU without native bfloat16 emulates it."""
    if dtype == "bfloat16" and not bfloat16_is_native(device):
        log.warning(
            "this CPU has neither AVX-512-BF16 nor AMX: --dtype bfloat16 is emulated here and runs slower than float32"
        )


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU ($CXX, else g++, clang++ or c++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def check_compile(compile: bool, device: torch.device) -> None:
    """Refuse ``--compile`` where it cannot work: on the CPU without a C++ compiler, which inductor needs."""
    if compile and device.type == "cpu" and cpp_compiler() is None:
        raise UsageError("--compile on the CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX); none found.")


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: the returned module runs compiled code; ``model`` itself still runs eagerly.

    Both share the parameters and buffers, so a run may switch between them from step to
    step (resgrad.train runs recorded steps eagerly, where the recorder's hooks see every module).
    """
    return torch.compile(model)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, dtype: str = "float32", channels_last: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, in the run's dtype and memory format."""
    was_training = model.training
    model.eval()
    device = split.images.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in zip(split.images.split(batch_size), split.labels.split(batch_size)):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device.type, dtype):
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(split)
    return total_loss.item() / n, correct.item() / n
