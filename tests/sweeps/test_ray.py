"""Sweeps on Ray: the address checked before anything runs, and runs that ask Ray for GPUs.

The GPU tests need no GPU: Ray's logical resources (``ray.init(num_gpus=...)``) schedule
the runs as GPUs would, while the runs themselves train on the CPU.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import one_sentence, run_cli, snapshot

from resgrad.config import TrainConfig
from resgrad.sweeps.grid import SweepSpec
from resgrad.sweeps.raycluster import assigned_gpu, check_ray_address, gpus_for
from resgrad.sweeps.sweep import run_sweep

ray = pytest.importorskip("ray")


def tiny(data_dir: Path, out: Path) -> list[str]:
    flags = ["sweep", "--archs", "residual", "--depths", "8", "--widths", "2", "--steps", "2", "--train-subset", "64"]
    return [*flags, "--test-subset", "50", "--threads", "1", "--device", "cpu", "--quiet"] + [
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
    ]


def dead_port() -> int:
    """A port where nothing listens (one the OS just gave and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ---------------------------------------------------------------- the address


def test_an_empty_ray_address_is_bad_input(tmp_path: Path, data_dir: Path) -> None:
    code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), "--executor", "ray", "--ray-address", ""])
    assert code == 2 and "--ray-address is empty" in one_sentence(err, "sweep")
    assert not (tmp_path / "sweep").exists()


def test_a_dead_address_is_refused_even_when_nothing_is_left_to_run(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sweep"
    assert run_cli(tiny(data_dir, out))[0] == 0  # done: a rerun has nothing to run
    before = snapshot(out)
    address = f"127.0.0.1:{dead_port()}"
    code, err = run_cli([*tiny(data_dir, out), "--executor", "ray", "--ray-address", address])
    assert code == 2 and f"nothing answers at Ray address {address}" in one_sentence(err, "sweep")
    assert snapshot(out) == before


def test_ray_address_in_the_environment_is_the_address_and_is_checked(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{dead_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    t0 = time.monotonic()
    code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), "--executor", "ray"])
    assert code == 2 and f"nothing answers at Ray address {address}" in one_sentence(err, "sweep")
    assert time.monotonic() - t0 < 30 and not (tmp_path / "sweep").exists()


def test_a_web_server_at_the_address_is_not_ray(tmp_path: Path, data_dir: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_port}"
        code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), "--executor", "ray", "--ray-address", address])
    finally:
        server.shutdown()
    assert code == 2 and f"what answers at Ray address {address} is not Ray" in one_sentence(err, "sweep")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_port_that_accepts_and_says_nothing_is_not_ray_within_30_seconds(tmp_path: Path, data_dir: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), "--executor", "ray", "--ray-address", address])
    assert code == 2 and "is not Ray" in one_sentence(err, "sweep")
    assert time.monotonic() - t0 < 30 and not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- GPUs per run


def test_runs_on_cuda_ask_for_one_gpu_by_default_and_cpu_runs_for_none() -> None:
    cuda, cpu, auto = (TrainConfig(device=d) for d in ("cuda", "cpu", "auto"))
    assert gpus_for([cuda], None, 0) == 1 and gpus_for([cpu], None, 8) == 0
    assert gpus_for([auto], None, 2) == 1 and gpus_for([auto], None, 0) == 0  # auto: CUDA where the cluster has GPUs
    assert gpus_for([cuda], 0.25, 8) == 0.25  # given: as given


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "index"),
    [
        ([3], "3", 0),  # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU: torch calls it cuda:0
        ([2, 3], "2,3", 0),
        ([3], "0,1,2,3", 3),  # all visible (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): its own place
        ([1], "5,1", 1),
        ([2], None, 2),
        ([], "0", None),  # no GPU assigned
    ],
)
def test_a_run_trains_on_the_gpu_ray_assigned(gpu_ids: list[int], visible: str | None, index: int | None) -> None:
    assert assigned_gpu(gpu_ids, visible) == index


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "ray", "--gpus-per-run", "1.5"], "a fraction up to 1 (runs share a GPU) or a whole number"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "gpus-per-run must be 0, a fraction up to 1"),
        (["--executor", "ray", "--gpus-per-run", "nan"], "gpus-per-run must be a finite number, got nan."),
        (["--gpus-per-run", "1"], "--gpus-per-run only applies to --executor ray"),
    ],
)
def test_gpus_per_run_ray_cannot_take_is_bad_input(
    tmp_path: Path, data_dir: Path, flags: list[str], message: str
) -> None:
    code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), *flags])
    assert code == 2 and message in one_sentence(err, "sweep")
    assert not (tmp_path / "sweep").exists()


def test_more_gpus_per_run_than_a_local_ray_would_have_is_refused_before_anything_is_written(
    tmp_path: Path, data_dir: Path
) -> None:
    import torch

    if ray.is_initialized() or torch.cuda.device_count():
        pytest.skip("needs a machine without a GPU and no Ray running in this process")
    code, err = run_cli([*tiny(data_dir, tmp_path / "sweep"), "--executor", "ray", "--gpus-per-run", "1"])
    assert code == 2 and "each run asks Ray for 1 GPU(s) (--gpus-per-run), but the Ray cluster has 0" in one_sentence(
        err, "sweep"
    )
    assert not (tmp_path / "sweep").exists()


@pytest.fixture(scope="module")
def logical_gpus() -> None:
    """A local Ray with 4 CPUs and 1 GPU that is only Ray's bookkeeping: runs still train on the CPU."""
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _most_at_once(spec: SweepSpec, out: Path, gpus_per_run: float) -> tuple[int, float]:
    """Run the sweep on the Ray of this process; the most runs Ray ran at once (CPUs in use), and GPUs in use."""
    total = ray.cluster_resources()
    most = [0.0, 0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            free = ray.available_resources()
            most[0] = max(most[0], total["CPU"] - free.get("CPU", 0))  # each run holds 1 CPU
            most[1] = max(most[1], total["GPU"] - free.get("GPU", 0))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        summary = run_sweep(spec, out, executor="ray", workers=4, progress=False, gpus_per_run=gpus_per_run)
    finally:
        done.set()
        watcher.join()
    assert (summary["status"] == "complete").all()
    return round(most[0]), most[1]


@pytest.mark.slow
def test_no_more_runs_at_once_than_the_gpus_allow(logical_gpus: None, tmp_path: Path, data_dir: Path) -> None:
    fixed = dict(steps=30, train_subset=64, test_subset=50, threads=1, device="cpu", data_dir=str(data_dir))
    spec = SweepSpec(grid={"arch": ["residual"], "depth": [8], "width": [2], "seed": [0, 1, 2, 3]}, fixed=fixed)
    # One GPU, a whole GPU per run: one run at a time, although 4 CPUs are free.
    runs, gpus = _most_at_once(spec, tmp_path / "whole", 1)
    assert runs == 1 and gpus == 1.0
    # Half a GPU per run: at most two runs share it.
    runs, gpus = _most_at_once(spec, tmp_path / "half", 0.5)
    assert runs <= 2 and gpus in (0.5, 1.0)


@pytest.mark.slow
def test_a_real_ray_head_passes_the_address_check(logical_gpus: None) -> None:
    check_ray_address(ray.get_runtime_context().gcs_address)  # raises UsageError if it did not answer as Ray
    assert os.environ.get("RAY_ADDRESS") is None
