"""Plain helpers shared by the test files (fixtures are in the conftest.py files): ``from helpers import ...``.

- running commands: :func:`exit_code`, :func:`run_cli` (in this process), :func:`run_child` (a child process,
  optionally with a file-size limit), :func:`one_sentence` (the one error line of a clean failure);
- tiny runs: :func:`tiny_run` and :func:`tiny_grid` (flags of a train or sweep of a second or two), ``TINY_BENCH``;
- folders: :func:`snapshot`, :func:`leftovers`, :func:`strict_json`, :func:`copy_sweep`, :func:`mnist_copy`,
  :func:`rerecord` (a run folder's records made to match what a test put there);
- disks and processes: :func:`tmpfs` (a small filesystem of its own), :func:`fill`, :func:`dead_pid`;
- the autograd reference: :func:`autograd_norms` (float64 norms of weight gradients and of the backward
  signal at named modules, from ``torch.autograd.grad`` on a fresh forward pass).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgrad.cli import main
from resgrad.ownership import MARKER, file_record, manifest

ROOT = Path(__file__).resolve().parents[1]  # the repository


# ---------------------------------------------------------------- running commands


def exit_code(argv: list[str]) -> int:
    """The exit code of `resgrad ARGV` run in this process: argparse errors raise SystemExit, command errors
    (a UsageError and the like) return 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of `resgrad ARGV` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = exit_code(argv)
    return code, err.getvalue()


def run_child(
    argv: list[str], file_size_limit: int | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m resgrad ARGV` in a child process, optionally with writes capped at ``file_size_limit`` bytes."""

    def limit() -> None:  # in the child: a write past the limit fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "resgrad", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if file_size_limit is not None else None,
        env={**os.environ, **(env or {})},
    )


def one_sentence(stderr: str, command: str) -> str:
    """The error line of a command that failed cleanly: one line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"resgrad {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- tiny runs


def tiny_run(data_dir: Path) -> list[str]:
    """`resgrad train` flags for a run of a second or two."""
    return [
        *("--arch", "residual", "--depth", "8", "--width", "2", "--steps", "3", "--record-every", "1"),
        *("--train-subset", "256", "--test-subset", "100", "--threads", "1", "--device", "cpu"),
        *("--data-dir", str(data_dir), "--quiet"),
    ]


def tiny_grid(data_dir: Path) -> list[str]:
    """`resgrad sweep` flags for a grid of one run of a second or two."""
    return [
        *("--archs", "residual", "--depths", "8", "--widths", "2", "--steps", "3", "--record-every", "1"),
        *("--train-subset", "256", "--test-subset", "100", "--threads", "1", "--device", "cpu"),
        *("--data-dir", str(data_dir), "--quiet"),
    ]


TINY_BENCH = [
    *("--devices", "cpu", "--archs", "plain", "--depths", "8", "--widths", "2", "--batch-sizes", "4"),
    *("--modes", "forward", "--min-run-time", "0.01", "--warmup", "0", "--threads", "1", "--quiet"),
]


# ---------------------------------------------------------------- folders


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """resgrad's temp and set-aside names left anywhere under ``folder`` (its manifests, .resgrad.json, are no leftovers)."""
    return [str(p) for p in folder.rglob(".resgrad-*") if p.name != MARKER]


def strict_json(path: Path) -> object:
    """Parse as strict JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def mnist_copy(data_dir: Path, tmp_path: Path, gz_only: bool = True) -> Path:
    """A copy of MNIST's raw folder under ``tmp_path/data`` (only the .gz files, or every file), to damage."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (data_dir / "MNIST" / "raw").iterdir():
        if path.suffix == ".gz" or not gz_only:
            shutil.copy(path, raw / path.name)
    return raw


def copy_sweep(sweep_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``sweep_dir`` at ``tmp_path/sweep``, for a test that changes it."""
    dst = tmp_path / "sweep"
    shutil.copytree(sweep_dir, dst)
    return dst


def rerecord(run_dir: Path) -> None:
    """Record a run folder's files as they are now, as ``save_run`` records them: whole by its records again.

    For a folder whose content a test changed on purpose (a model.pt that is not a state dict).
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["files"] = file_record(run_dir, sorted(summary["files"]))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / MARKER).write_text(json.dumps(manifest(run_dir, "run")))


# ---------------------------------------------------------------- disks and processes


@contextlib.contextmanager
def tmpfs(path: Path, options: str = "size=1m") -> Iterator[Path]:
    """A small filesystem of its own at ``path`` (a tmpfs: root only; the test is skipped where mount is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` with a file of the test's own: to the last byte, or to ``leave`` bytes short of it."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for block in (4096, 1):  # then what the last block left room for
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
        if leave:
            f.truncate(max(0, f.tell() - leave))


def dead_pid() -> int:
    """The id of a process that ran and is gone (what a killed run leaves in its temp names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- the autograd reference


@dataclass
class AutogradNorms:
    """Reference norms in float64: ``weight_grad[layer]`` and ``activation_grad[module]`` (over all its calls)."""

    weight_grad: dict[str, float]
    activation_grad: dict[str, float]
    signal_dtype: dict[str, torch.dtype]  # the dtype autograd gave the backward signal at each module's output

    def array(self, layers: Sequence[str], signal: Sequence[str]) -> np.ndarray:
        """The weight norms of ``layers``, then the signal norms of ``signal``, in that order."""
        return np.array([*(self.weight_grad[n] for n in layers), *(self.activation_grad[n] for n in signal)])


def autograd_norms(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: Sequence[str] = (),
    signal: Sequence[str] = (),
    scale: float = 1.0,
    autocast: torch.dtype | None = None,
) -> AutogradNorms:
    """Norms from ``torch.autograd.grad`` of ``cross_entropy(model(x), y) * scale`` on a fresh forward pass.

    No recorder, no tensor hooks, and ``.grad`` is left as it was: the gradients of the weights of the
    modules ``layers`` and of the outputs of the modules ``signal`` (a module called twice: the norm over
    both outputs), each formed in float64 (no underflow at 1e-23, no overflow at 1e30). ``autocast``: run
    forward and loss under ``torch.autocast`` in that dtype, as ``resgrad.train.train_step`` does.
    """
    named = dict(model.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in signal}
    handles = [named[n].register_forward_hook(lambda m, i, o, n=n: outputs[n].append(o)) for n in signal]
    try:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(model(x), y) * scale
    finally:
        for h in handles:
            h.remove()
    called = [o for n in signal for o in outputs[n]]
    grads = torch.autograd.grad(loss, [named[n].weight for n in layers] + called)
    weight = {n: g.double().norm().item() for n, g in zip(layers, grads)}
    rest = iter(grads[len(layers) :])
    per_module = {n: [next(rest) for _ in outputs[n]] for n in signal}
    return AutogradNorms(
        weight,
        {n: torch.cat([g.double().flatten() for g in gs]).norm().item() for n, gs in per_module.items()},
        {n: gs[0].dtype for n, gs in per_module.items()},
    )
