"""MNIST as device tensors: values equal torchvision's transform pipeline; damaged files are named."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import mnist_copy, one_sentence, run_cli, tiny_run
from torchvision import transforms
from torchvision.datasets import MNIST

import resgrad.data
from resgrad.config import TrainConfig
from resgrad.data import IDX_MD5, MNIST_FILES, MNIST_MD5, DataError, batches, load_split, resolve_data_dir
from resgrad.train import train

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_images_equal_totensor_then_normalize(data_dir: Path) -> None:
    split = load_split(False, data_dir)
    assert split.images.shape == (10_000, 1, 28, 28) and split.images.dtype == torch.float32
    assert split.labels.dtype == torch.int64
    assert torch.bincount(split.labels).tolist() == TEST_COUNTS
    reference = MNIST(
        str(data_dir),
        train=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]),
    )
    for i in (0, 1234, 9999):
        image, label = reference[i]
        torch.testing.assert_close(split.images[i], image, rtol=0, atol=1e-6)
        assert split.labels[i].item() == label


def test_train_split_and_subset(data_dir: Path) -> None:
    full = load_split(True, data_dir)
    assert len(full) == 60_000
    sub = load_split(True, data_dir, subset=100)
    assert len(sub) == 100 and torch.equal(sub.images, full.images[:100])


def test_batches_are_a_seeded_permutation() -> None:
    one = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(1))))
    two = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(1))))
    other = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(2))))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert sorted(one.tolist()) == list(range(10))
    assert [len(b) for b in batches(10, 3, torch.Generator())] == [3, 3, 3, 1]


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESGRAD_DATA", "/from/env")
    assert resolve_data_dir("/from/flag") == Path("/from/flag")
    assert resolve_data_dir() == Path("/from/env")
    monkeypatch.delenv("RESGRAD_DATA")
    assert resolve_data_dir() == Path("data")


def test_missing_files_offline_name_the_folder_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_split(False, tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)


def test_subset_must_be_positive(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 1 image"):
        load_split(False, data_dir, subset=0)


# ---------------------------------------------------------------- damaged MNIST


def test_a_truncated_gz_is_named_with_its_md5(tmp_path: Path, data_dir: Path) -> None:
    raw = mnist_copy(data_dir, tmp_path)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    found, expected = hashlib.md5(gz.read_bytes()).hexdigest(), dict(MNIST.resources)[gz.name]
    code, err = run_cli(["train", *tiny_run(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{gz} has MD5 {found}, expected {expected}; replace it with the official file."
    )
    assert not (tmp_path / "run").exists()


def test_a_garbage_idx_file_is_named_as_damaged(tmp_path: Path, data_dir: Path) -> None:
    load = TrainConfig(
        arch="residual",
        depth=8,
        width=2,
        steps=1,
        train_subset=64,
        test_subset=50,
        threads=1,
        device="cpu",
        data_dir=str(data_dir),
    )
    train(load, progress=False)  # torchvision has unpacked the four files beside their .gz
    raw = mnist_copy(data_dir, tmp_path, gz_only=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(os.urandom(1000))
    code, err = run_cli(["train", *tiny_run(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_sentence(err, "train").endswith(
        f"{raw / 'train-labels-idx1-ubyte'} is damaged (its header is not that of MNIST's file); "
        "delete it to have it unpacked again from its .gz."
    )


# ---------------------------------------------------------------- damaged unpacked files


def _unpacked_copy(data_dir: Path, tmp_path: Path) -> Path:
    """The four official .gz files, and each unpacked beside it (as torchvision leaves them)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        gz = data_dir / "MNIST" / "raw" / name
        shutil.copy(gz, raw / name)
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    return raw


def test_the_md5_sums_of_the_unpacked_files_are_those_of_the_official_gz_files_unpacked(data_dir: Path) -> None:
    for gz_name, gz_md5 in MNIST.resources:
        gz = (data_dir / "MNIST" / "raw" / gz_name).read_bytes()
        assert hashlib.md5(gz).hexdigest() == gz_md5  # torchvision's sum: the official file
        assert hashlib.md5(gzip.decompress(gz)).hexdigest() == IDX_MD5[gz_name.removesuffix(".gz")]


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"])
def test_an_unpacked_file_with_mnists_header_and_size_but_other_bytes_is_named_before_training(
    tmp_path: Path, data_dir: Path, name: str
) -> None:
    raw = _unpacked_copy(data_dir, tmp_path)
    load_split(False, tmp_path / "data", subset=10)  # the whole set loads
    idx = raw / name
    data = bytearray(idx.read_bytes())
    header = 8 if "labels" in name else 16
    # Labels up to 255 (IndexError mid-training once), or pixels of noise (trained on, exit 0, once).
    data[header:] = random.Random(0).randbytes(len(data) - header)
    idx.write_bytes(bytes(data))
    argv = ["train", "--arch", "residual", "--depth", "8", "--width", "2", "--steps", "2", "--train-subset", "64"]
    argv += ["--test-subset", "50", "--threads", "1", "--device", "cpu", "--quiet"]
    code, err = run_cli([*argv, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    found = hashlib.md5(bytes(data)).hexdigest()
    assert code == 2 and one_sentence(err, "train").endswith(
        f"{idx} is damaged (MD5 {found}, not that of the official file, {IDX_MD5[name]}); "
        "delete it to have it unpacked again from its .gz."
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="not that of the official file"):
        load_split("train" in name, tmp_path / "data", subset=10)


def test_a_process_reads_a_split_once_and_again_when_its_files_change(data_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:  # the unpacked files only
        shutil.copyfile(data_dir / "MNIST" / "raw" / name.removesuffix(".gz"), raw / name.removesuffix(".gz"))
    first = load_split(False, tmp_path)
    reads = []
    real = resgrad.data._mnist
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resgrad.data, "_mnist", lambda *a: reads.append(a) or real(*a))
        again = load_split(False, tmp_path, subset=500)
        assert reads == []  # from memory: neither torchvision nor the checks ran
        assert torch.equal(again.images, first.images[:500]) and torch.equal(again.labels, first.labels[:500])
        again.labels.zero_()  # each call's tensors are its own: the next call is not changed by this
        assert torch.equal(load_split(False, tmp_path, subset=500).labels, first.labels[:500])
        # A file that changed is read and checked again: here a damaged one is refused.
        labels = raw / "t10k-labels-idx1-ubyte"
        labels.write_bytes(labels.read_bytes()[:-1])
        with pytest.raises(DataError, match="is damaged"):
            load_split(False, tmp_path)
        assert len(reads) == 1


def test_the_md5_sums_are_torchvisions() -> None:
    assert MNIST_MD5 == dict(MNIST.resources)


def test_present_files_are_read_without_importing_torchvision(data_dir: Path) -> None:
    """torchvision's import costs about what torch's does: a run on present files goes without it."""
    code = (
        "import sys; from resgrad.data import load_split; "
        f"s = load_split(False, {str(data_dir)!r}, 10); load_split(True, {str(data_dir)!r}, 10); "
        "print(len(s), 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["10", "False"]
