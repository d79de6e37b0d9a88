"""Whole-step CUDA graphs for the training loop (``--cuda-graphs``).

On a GPU a small net's step is bound by kernel launches and Python, not by the
GPU. Following PyTorch's "whole network capture" recipe (``torch.cuda.graphs``
docs), :class:`GraphedTrainStep` captures :func:`resgrad.train.train_step` once —
forward and loss (under autocast for bfloat16), ``zero_grad(set_to_none=True)``,
backward with the recorder's hooks, the recorder's ``end_step`` and the optimizer
update (SGD or Adam) — and replays it:

1. **Static input.** The training split already lives on the device. The graph
   gathers its batch ``images[static_idx]`` itself, so a step's input is one small
   copy of the batch's indices into ``static_idx``, then ``graph.replay()``.
2. **Warm-up.** The first :data:`WARMUP_STEPS` full-size steps run eagerly on a
   side stream, as the recipe asks: lazy initialisation (cuBLAS/cuDNN handles,
   autograd's streams) happens outside capture, and the optimizer creates its state
   (SGD's momentum buffers, Adam's moments) on its first step — captured, that
   creation would be replayed as a reset on every step. These are real steps of the run: nothing is thrown away.
3. **Capture.** Gradients are None when capture starts (``train_step`` sets them
   so), so backward allocates them from the graph's memory pool and each replay
   overwrites them instead of accumulating. SGD needs no ``capturable=True``
   (``torch.optim.SGD`` keeps no step count and has no such flag); Adam gets it
   (:func:`resgrad.train.make_optimizer`), so its step count lives on the device.
   The parameters, optimizer state and batch-norm statistics were allocated before
   capture and are updated in place. Capture runs nothing, so the step being
   captured is then performed by its first replay.
4. **Two graphs**, each captured when first needed: one for the steps the
   recorder records, one for the others, so an unrecorded step pays nothing for
   the recorder. They share one memory pool: they never run concurrently, and
   nothing one graph leaves in the pool is read by the other (what outlives a
   replay lives outside the pool, and the caller copies the loss out at once).

The recorder under a graph
--------------------------
The recorder computes its norms in hooks, in Python. Under a graph Python runs
once, at capture: the norm kernels are captured, and the tensor ``end_step``
stacks them into becomes a static buffer that every replay of the recorded graph
overwrites. So the record ``end_step`` makes during capture (a buffer, not yet
numbers) is taken back with :meth:`GradientRecorder.take_record`, and after each
replay of a recorded step a *copy* of the buffer is recorded under that step and
epoch with :meth:`GradientRecorder.add_record`. The copy stays on the device:
nothing reaches the host before ``to_frame``, as in eager mode. This needs the
recorder's ``begin_step``, hooks and ``end_step`` to do device work only: no
``.item()``, no host synchronisation, no branch on a tensor's value.

The last, smaller batch
-----------------------
A graph has fixed shapes. When the batch size does not divide the training set,
an epoch's last batch is smaller; the caller runs it eagerly, so a graphed run
trains on exactly the batches of an eager one (one eager step per epoch).

Numbers: a replay runs the kernels of the eager step it captured, so a graphed
run's losses and norms equal an eager run's to within the run-to-run variation
of the GPU's non-deterministic kernels (``tests/test_cudagraph.py``: 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from resgrad.config import CUDA_GRAPH_MODES as MODES
from resgrad.errors import UsageError, check_choice
from resgrad.gradients import GradientRecorder

WARMUP_STEPS = 3  # eager steps on a side stream before the first capture

T = TypeVar("T")
StepFn = Callable[..., torch.Tensor]  # step_fn(x, y, step=, epoch=) -> the loss, 0-d, on the device


def resolve_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether a run on ``device`` replays CUDA graphs: ``auto`` means on CUDA; ``on`` off CUDA is a usage error."""
    check_choice("cuda-graphs", mode, MODES)
    if mode == "on" and device.type != "cuda":
        where = "the run's device is cpu" if torch.cuda.is_available() else "torch sees no CUDA device here"
        raise UsageError(f"cuda-graphs 'on' needs a CUDA device, but {where}; use --cuda-graphs auto or off.")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def on_side_stream(fn: Callable[[], T], stream: torch.cuda.Stream) -> T:
    """``fn()`` on ``stream``, after the current stream's queued work and before its next (the recipe's warm-up)."""
    current = torch.cuda.current_stream()
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        out = fn()
    current.wait_stream(stream)
    return out


def capture(fn: Callable[[], T], pool: object | None = None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Capture one call of ``fn`` into a new CUDA graph (running nothing); return it and ``fn``'s static outputs.

    Args:
        fn: device work only, already warmed up (see :func:`on_side_stream`).
        pool: another graph's ``pool()`` to share its memory (graphs that never run concurrently).
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def make_graphed(fn: Callable[[], object], warmup: int = WARMUP_STEPS) -> Callable[[], None]:
    """``fn`` (device work on fixed tensors) warmed up ``warmup`` times on a side stream, captured; returns the replay.

    For ``resgrad bench``: each replay redoes ``fn``'s work on the same tensors.
    """
    stream = torch.cuda.Stream()
    for _ in range(warmup):
        on_side_stream(fn, stream)
    graph, _ = capture(fn)
    return graph.replay


class GraphedTrainStep:
    """Training steps of one full batch size as replays of captured CUDA graphs.

    Args:
        step_fn: ``step_fn(x, y, step=, epoch=)`` does one training step and returns the
            detached loss: :func:`resgrad.train.train_step` with model, optimizer, recorder,
            dtype and memory format bound.
        images: the training images, on the CUDA device.
        labels: the training labels, on the same device.
        batch_size: the one batch size replayed; other sizes are the caller's to run eagerly.
        recorder: the (entered) recorder ``step_fn`` reports to, or None.
    """

    def __init__(
        self,
        step_fn: StepFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        recorder: GradientRecorder | None = None,
    ) -> None:
        if images.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the data on a CUDA device, got {images.device}.")
        self.step_fn = step_fn
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.recorder = recorder
        self.static_idx = torch.zeros(batch_size, dtype=torch.int64, device=images.device)
        self.warmup_left = WARMUP_STEPS
        self.replays = 0
        self._stream = torch.cuda.Stream(images.device)
        # recorded? -> (graph, its static loss, its static norms, or None)
        self._graphs: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor | None]] = {}

    def _step(self, step: int, epoch: int) -> torch.Tensor:
        x, y = self.images[self.static_idx], self.labels[self.static_idx]
        return self.step_fn(x, y, step=step, epoch=epoch)

    def _capture(self, step: int, epoch: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor | None]:
        pool = next(iter(self._graphs.values()))[0].pool() if self._graphs else None
        graph, loss = capture(lambda: self._step(step, epoch), pool)
        norms = self.recorder.take_record(step) if self.recorder is not None else None
        return graph, loss, norms

    def __call__(self, idx: torch.Tensor, step: int, epoch: int) -> torch.Tensor:
        """Train on the batch ``images[idx]`` (``len(idx) == batch_size``) as step ``step``; return its loss on the device.

        After warm-up the loss is the graph's static buffer: copy it before the next call.
        """
        if len(idx) != self.batch_size:
            raise ValueError(f"a graphed step takes batches of {self.batch_size}, got {len(idx)}; run it eagerly.")
        self.static_idx.copy_(idx, non_blocking=True)
        if self.warmup_left:
            self.warmup_left -= 1
            return on_side_stream(lambda: self._step(step, epoch), self._stream)
        recorded = self.recorder is not None and bool(self.recorder.schedule(step))
        if recorded not in self._graphs:
            self._graphs[recorded] = self._capture(step, epoch)
        graph, loss, norms = self._graphs[recorded]
        graph.replay()
        self.replays += 1
        if norms is not None:
            self.recorder.add_record(step, epoch, norms)  # type: ignore[union-attr]
        return loss
