"""MNIST as two normalised tensors on the training device, and seeded batch order.

The four official files are checked (MD5, idx header and size) and read once per process;
torchvision downloads and unpacks them where they are missing. After that a batch is an
index into a device tensor, with no per-sample PIL transform in the training loop.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


# The official files' MD5 sums, as torchvision.datasets.MNIST.resources lists them (so that checking
# and reading present files needs no torchvision, whose import costs about as much as torch's).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# The unpacked idx files: items and the shape of one item.
_IDX_SHAPES = {
    "train-images-idx3-ubyte": (60_000, (28, 28)),
    "train-labels-idx1-ubyte": (60_000, ()),
    "t10k-images-idx3-ubyte": (10_000, (28, 28)),
    "t10k-labels-idx1-ubyte": (10_000, ()),
}
# The MD5 sums of the unpacked files: of the bytes gunzip makes of the .gz files above.
IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _not_found(raw: Path, why: str) -> DataError:
    return DataError(
        f"MNIST is not in {raw} and could not be downloaded ({why}); "
        f"put the four official files there ({', '.join(MNIST_FILES)}) or point --data-dir/$RESGRAD_DATA at them."
    )


# MD5 sums this process has computed, by (path, size, mtime): a sweep checks the files once per run.
_MD5_SEEN: dict[tuple[str, int, int], str] = {}


def _md5(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_SEEN:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _MD5_SEEN[key] = digest.hexdigest()
    return _MD5_SEEN[key]


def _idx_problem(path: Path, items: int, shape: tuple[int, ...]) -> str | None:
    """What is wrong with an unpacked idx file of unsigned bytes, from its header and size; None if nothing."""
    dims = (items, *shape)
    header = 4 + 4 * len(dims)
    with open(path, "rb") as f:
        head = f.read(header)
    size = path.stat().st_size
    want = (0x0800 + len(dims)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    if head != want:
        return "its header is not that of MNIST's file"
    if size != header + math.prod(dims):
        return f"{size} bytes, expected {header + math.prod(dims)}"
    return None


def check_mnist(data_dir: str | os.PathLike[str] | None = None, require: bool = False) -> None:
    """Check the MNIST files in ``DATA_DIR/MNIST/raw`` without loading them.

    Each ``.gz`` must have torchvision's MD5 sum, and each unpacked idx file MNIST's header,
    size and the MD5 sum of the official unpacked file (:data:`IDX_MD5`). A file that is absent
    is left to torchvision, which downloads it, unless ``require``, when it is an error too.

    Raises:
        DataError: naming the damaged (or, with ``require``, the missing) file.
    """
    raw = resolve_data_dir(data_dir) / "MNIST" / "raw"
    for gz_name, expected in MNIST_MD5.items():
        gz, idx = raw / gz_name, raw / gz_name.removesuffix(".gz")
        if gz.is_file():
            found = _md5(gz)
            if found != expected:
                raise DataError(f"{gz} has MD5 {found}, expected {expected}; replace it with the official file.")
        if idx.is_file():
            problem = _idx_problem(idx, *_IDX_SHAPES[idx.name])
            if problem is None and (found := _md5(idx)) != IDX_MD5[idx.name]:
                problem = f"MD5 {found}, not that of the official file, {IDX_MD5[idx.name]}"
            if problem:
                fix = "delete it to have it unpacked again from its .gz" if gz.is_file() else "replace it"
                raise DataError(f"{idx} is damaged ({problem}); {fix}.")
        elif require and not gz.is_file():
            raise _not_found(raw, f"{gz_name} is missing")


def _read_idx(path: Path) -> torch.Tensor:
    """An unpacked idx file of unsigned bytes that passed :func:`check_mnist`, as a uint8 tensor of its shape."""
    items, shape = _IDX_SHAPES[path.name]
    header = 4 + 4 * (1 + len(shape))
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8, offset=header).view(items, *shape)


def _mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images (N, 28, 28) uint8 and labels int64, checked; torchvision fetches and unpacks missing files."""
    check_mnist(root)
    raw = root / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if images.is_file() and labels.is_file():  # read as torchvision reads them, without its slow import
        return _read_idx(images), _read_idx(labels).to(torch.int64)
    from torchvision.datasets import MNIST  # to download and unpack what is missing

    try:
        ds = MNIST(str(root), train=train, download=True)
        return ds.data, ds.targets
    except (RuntimeError, OSError) as exc:  # no network and no files: urllib's URLError is an OSError
        raise _not_found(raw, exc.__class__.__name__) from exc
    except (AssertionError, ValueError, TypeError) as exc:  # files that pass the checks yet do not parse
        raise DataError(
            f"MNIST in {raw} cannot be read ({exc.__class__.__name__}: {exc}); "
            "replace the four files with the official ones."
        ) from exc


# The splits this process has read, by (raw folder, split): the files' stamp, then images (uint8) and labels.
# A sweep worker trains many runs; it reads and checks MNIST for the first only.
_READ: dict[tuple[Path, bool], tuple[tuple[tuple[str, int, int, int], ...], torch.Tensor, torch.Tensor]] = {}


def _stamp(raw: Path, train: bool) -> tuple[tuple[str, int, int, int], ...]:
    """What identifies the split's files as they are now: each present file's name, inode, size and mtime."""
    prefix = "train" if train else "t10k"
    found = []
    for name in MNIST_FILES:
        if name.startswith(prefix):
            for path in (raw / name, raw / name.removesuffix(".gz")):
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _read_split(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images (N, 28, 28) uint8 and labels, read once per process while its files stay the same."""
    raw = root / "MNIST" / "raw"
    key = (raw.resolve(), train)
    known = _READ.get(key)
    if known is not None and known[0] == _stamp(raw, train):
        return known[1], known[2]
    data, targets = _mnist(root, train)
    _READ[key] = (_stamp(raw, train), data, targets)
    return data, targets


def load_split(
    train: bool,
    data_dir: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
) -> Split:
    """Load one split, normalised with the usual MNIST mean and std, as new tensors on ``device``.

    The files are read and checked once per process (again when they change): later calls
    only normalise, which a sweep worker's runs after its first find in memory.

    Args:
        train: the 60,000 training images, else the 10,000 test images.
        data_dir: folder holding ``MNIST/raw``; see :func:`resolve_data_dir`.
        subset: keep only the first ``subset`` images.
        device: where the tensors live.
    """
    if subset is not None and subset < 1:
        raise UsageError(f"a subset must hold at least 1 image, got {subset}.")
    data, targets = _read_split(resolve_data_dir(data_dir), train)
    if subset is not None:
        data, targets = data[:subset], targets[:subset]
    # Same numbers as ToTensor() then Normalize((0.1307,), (0.3081,)): the same float32 operations, in
    # place (a third of the time: each new 188 MB tensor costs its page faults).
    images = data.to(torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return Split(images.to(device), targets.to(torch.int64, copy=True).to(device))


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
