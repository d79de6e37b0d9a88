"""The timing engine of ``resgrad bench``: one step of a model, timed, its FLOPs counted; a device's peak.

``make_step`` builds the step (forward, forward + backward, or the training step),
``count_flops`` counts it with ``torch.utils.flop_counter.FlopCounterMode``, ``time_fn``
times it with ``torch.utils.benchmark.Timer`` and ``measure_peak`` times a dense matmul,
the reference for % of peak. ``is_oom`` tells an allocation failure from a bug.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resgrad.bench.config import MODES
from resgrad.compute import autocast
from resgrad.config import DTYPES as DTYPE_NAMES
from resgrad.errors import check_choice, oom_cause
from resgrad.train import train_step

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Side of the square matmul that measures a device's peak: big enough to reach it, small enough to be quick.
PEAK_MATMUL_N = {"cpu": 2048, "cuda": 8192}


# ---------------------------------------------------------------- one step


def make_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    dtype: str = "float32",
    optimizer: torch.optim.Optimizer | None = None,
    synchronize: bool = True,
) -> Callable[[], None]:
    """A no-argument function doing one ``mode`` step of ``model`` on (x, y).

    - ``forward``: the forward pass under ``torch.no_grad()``;
    - ``forward_backward``: forward, cross-entropy loss and backward (gradients reset first);
    - ``train_step``: :func:`resgrad.train.train_step` itself, the step ``resgrad train`` runs
      (without a recorder), so that the benchmark cannot drift from it.

    ``bfloat16`` runs forward and loss under :func:`resgrad.train.autocast`, as training does. On
    CUDA the step ends with ``torch.cuda.synchronize()``, so that a timer around it measures the
    finished work, unless ``synchronize`` is False (a step to capture as a CUDA graph).
    """
    check_choice("mode", mode, MODES)
    check_choice("dtype", dtype, DTYPE_NAMES)
    if mode == "train_step" and optimizer is None:
        raise ValueError("mode 'train_step' needs an optimizer.")
    device = x.device
    cuda = device.type == "cuda" and synchronize

    def done() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def forward() -> None:
        with torch.no_grad(), autocast(device.type, dtype):
            model(x)
        done()

    def forward_backward() -> None:
        with autocast(device.type, dtype):
            loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        done()

    def step() -> None:
        train_step(model, optimizer, x, y, dtype=dtype)  # type: ignore[arg-type]
        done()

    return {"forward": forward, "forward_backward": forward_backward, "train_step": step}[mode]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (2 per multiply-add).

    Only matmuls and convolutions (and their backward) are counted; element-wise work,
    such as the residual addition or the optimizer's update, is not.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_fn(
    fn: Callable[[], object], threads: int, min_run_time: float, warmup: int = 3, label: str = ""
) -> tuple[float, float]:
    """(median, IQR) in seconds of ``fn()`` by ``Timer.blocked_autorange``, after ``warmup`` untimed calls.

    ``Timer``'s default timer also synchronises CUDA when it reads the clock (before and
    after each block of calls); the CUDA steps of :func:`make_step` synchronise inside too.
    """
    # Importing torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on
    # CPU-only machines: noise for a person watching the bench.
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        ext_log.setLevel(level)

    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


# torch.OutOfMemoryError from torch 2.5; before it, the same class lived only under torch.cuda.
OutOfMemoryError: type[RuntimeError] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` or an exception in its chain says an allocation failed (CUDA or CPU)."""
    return oom_cause(exc) is not None


def oom_message(exc: BaseException) -> str | None:
    """The first line of the allocation failure in ``exc``'s chain (at most 300 characters); None if there is none."""
    cause = oom_cause(exc)
    if cause is None:
        return None
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


# ---------------------------------------------------------------- peak


def convs_use_tf32() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 (torch's default: yes).

    Read through torch's newer ``fp32_precision`` flags where they exist ("none" defers to
    the level above), since reading the legacy ``allow_tf32`` raises once a user has set
    the newer ones.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:  # torch < 2.9: only the legacy flag
        return bool(torch.backends.cudnn.allow_tf32)
    for level in (conv, torch.backends.cudnn, torch.backends):
        precision = getattr(level, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False


@contextlib.contextmanager
def matmul_precision_like_convs(device: str, dtype: str) -> Iterator[str]:
    """Let a float32 CUDA matmul use TF32 exactly when the convolutions may; yield the precision it runs in.

    Without this, torch's defaults time the float32 peak without TF32 while the convs of
    the points use it, and % of peak can pass 100. The previous setting is restored.
    """
    if device != "cuda" or dtype != "float32":
        yield dtype
        return
    before = torch.get_float32_matmul_precision()
    tf32 = convs_use_tf32()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # high: TF32 on a GPU that has it
    try:
        yield "tf32" if tf32 else "float32"
    finally:
        torch.set_float32_matmul_precision(before)


def measure_peak(device: str, dtype: str, threads: int, min_run_time: float) -> tuple[int, float, str]:
    """(n, GFLOP/s, precision) of an n x n dense matmul in ``dtype`` on ``device``: the reference for % of peak.

    precision is what the matmul ran in: ``dtype``, or ``tf32`` for float32 on CUDA when
    cuDNN's convolutions may use TF32 (see :func:`matmul_precision_like_convs`).
    """
    n = PEAK_MATMUL_N[device]
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=DTYPES[dtype], generator=gen)
    b = torch.randn(n, n, device=dev, dtype=DTYPES[dtype], generator=gen)
    out = torch.empty(n, n, device=dev, dtype=DTYPES[dtype])
    cuda = dev.type == "cuda"

    def matmul() -> None:
        torch.mm(a, b, out=out)
        if cuda:
            torch.cuda.synchronize(dev)

    with matmul_precision_like_convs(device, dtype) as precision:
        median_s, _ = time_fn(matmul, threads, min_run_time, warmup=2, label=f"peak {device} {dtype}")
    return n, 2 * n**3 / median_s / 1e9, precision
