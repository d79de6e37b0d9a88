"""MNIST as two normalised tensors on the training device, and seeded batch order.

Images go through ``torchvision.datasets.MNIST`` once; after that a batch is an
index into a device tensor, with no per-sample PIL transform in the training loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from resgrad.errors import UsageError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class DataError(UsageError):
    """MNIST could not be found or fetched."""


@dataclass
class Split:
    """One MNIST split: images (N, 1, 28, 28) float32 normalised, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$RESGRAD_DATA``, else ``./data``."""
    return Path(data_dir or os.environ.get("RESGRAD_DATA") or "data")


def _mnist(root: Path, train: bool):  # -> torchvision.datasets.MNIST
    from torchvision.datasets import MNIST  # torchvision's import is slow; keep it off `--help`

    try:
        return MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as exc:  # no network and no files: urllib's URLError is an OSError
        raise DataError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded ({exc.__class__.__name__}); "
            f"put the four official files there ({', '.join(MNIST_FILES)}) or point --data-dir/$RESGRAD_DATA at them."
        ) from exc


def load_split(
    train: bool,
    data_dir: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
) -> Split:
    """Load one split, normalised with the usual MNIST mean and std, as tensors on ``device``.

    Args:
        train: the 60,000 training images, else the 10,000 test images.
        data_dir: folder holding ``MNIST/raw``; see :func:`resolve_data_dir`.
        subset: keep only the first ``subset`` images.
        device: where the tensors live.
    """
    if subset is not None and subset < 1:
        raise UsageError(f"a subset must hold at least 1 image, got {subset}.")
    ds = _mnist(resolve_data_dir(data_dir), train)
    data, targets = ds.data, ds.targets
    if subset is not None:
        data, targets = data[:subset], targets[:subset]
    # Same numbers as ToTensor() then Normalize((0.1307,), (0.3081,)).
    images = ((data.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    return Split(images.contiguous().to(device), targets.to(torch.int64).to(device))


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for one epoch: a seeded ``randperm``, the last batch possibly smaller."""
    perm = torch.randperm(n, generator=generator)
    yield from perm.split(batch_size)


def endless_batches(n: int, batch_size: int, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(epoch, indices)`` forever, epoch counting from 0, reshuffled each epoch from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        for idx in batches(n, batch_size, generator):
            yield epoch, idx
        epoch += 1
