"""A Ray cluster for a sweep: its address checked before anything runs, and the GPUs each run asks for.

``ray.init`` waits for ever on an address where nothing (or something that is not Ray)
answers; :func:`check_ray_address` refuses such an address within seconds. Runs on CUDA ask
Ray for a GPU each (``--gpus-per-run``, a fraction to share one), so that Ray runs no more of
them at once than the cluster's GPUs allow; :func:`assigned_gpu` says which one a run got.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

import torch

from resgrad.config import TrainConfig
from resgrad.errors import UsageError


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray, which is not installed; pip install 'resgrad[ray]'.") from None
    return ray


def gpus_for(configs: list[TrainConfig], gpus_per_run: float | None, cluster_gpus: float) -> float:
    """The GPUs each run asks Ray for: ``gpus_per_run``, else 1 for runs on CUDA (``auto`` where the cluster has GPUs)."""
    if gpus_per_run is not None:
        return gpus_per_run
    devices = {c.device for c in configs}
    return 1.0 if "cuda" in devices or ("auto" in devices and cluster_gpus > 0) else 0.0


def gpus_that_fit(configs: list[TrainConfig], gpus_per_run: float | None, have: float) -> float:
    """The GPUs each run asks for (:func:`gpus_for`); ``UsageError`` when the cluster has fewer (no run would start)."""
    gpus = gpus_for(configs, gpus_per_run, have)
    if gpus > have:
        raise UsageError(
            f"each run asks Ray for {gpus:g} GPU(s) (--gpus-per-run), but the Ray cluster has {have:g}; "
            "give --gpus-per-run 0 to run on CPUs, or a cluster with GPUs."
        )
    return gpus


def check_ray_gpus(configs: list[TrainConfig], gpus_per_run: float | None, ray_address: str | None) -> None:
    """Refuse, before anything is written, runs that ask for more GPUs than the Ray they will run on has.

    Known before connecting: a Ray this process already runs, and a local Ray (it finds the
    GPUs torch sees). A cluster's GPUs are known once connected; :func:`run_all` checks them then.
    """
    ray = import_ray()
    if ray.is_initialized():
        gpus_that_fit(configs, gpus_per_run, float(ray.cluster_resources().get("GPU", 0)))
    elif ray_address is None:
        gpus_that_fit(configs, gpus_per_run, float(torch.cuda.device_count()))


def check_gpus_per_run(gpus: float) -> None:
    """Ray's rule for a task's GPUs: a fraction up to 1 (runs share a GPU), or a whole number."""
    is_number = isinstance(gpus, (int, float)) and not isinstance(gpus, bool)
    if not is_number or not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)) or gpus > 1024:
        raise UsageError(
            f"gpus-per-run must be 0, a fraction up to 1 (runs share a GPU) or a whole number of GPUs, got {gpus!r}."
        )


# The start of an HTTP/2 connection (gRPC runs on it): the client preface, then an empty SETTINGS frame.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4  # the frame type an HTTP/2 server sends first


def check_ray_address(address: str, timeout: float = 10.0) -> None:
    """Refuse, within seconds, a Ray address where nothing answers, or something that is not Ray.

    ``ray.init`` would retry for ever. A Ray head (its GCS, or the Ray Client server of a
    ``ray://`` address) speaks gRPC, so it answers an HTTP/2 greeting with a SETTINGS
    frame; a web server, a database or a silent port does not.
    """
    target = address
    if address == "auto":
        try:  # the lookup ray.init does for "auto"
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # pragma: no cover  (a Ray without it: ray.init reports what it finds)
            return
        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as exc:
            raise UsageError(
                f"--ray-address auto finds no running Ray cluster ({str(exc).splitlines()[0]}); "
                "start one with `ray start --head`, or leave --ray-address out."
            ) from None
    host, sep, port = target.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"Ray address {address!r} is not host:port, ray://host:port or auto.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_HELLO)
            head = b""
            with contextlib.suppress(OSError):  # a reset or a timeout: no greeting
                while len(head) < 9 and (chunk := sock.recv(9 - len(head))):
                    head += chunk
    except OSError as exc:
        raise UsageError(
            f"nothing answers at Ray address {address} ({exc.strerror or exc}); "
            "start the cluster there, or fix --ray-address."
        ) from None
    if len(head) < 9 or head[3] != _SETTINGS:
        raise UsageError(
            f"what answers at Ray address {address} is not Ray (it does not answer as a Ray head node does); "
            "fix --ray-address."
        )


def ray_address_from_env(executor: str, ray_address: str | None) -> str | None:
    """``ray_address``, or for ``--executor ray`` without one, ``$RAY_ADDRESS`` (as ``ray.init`` reads it)."""
    if ray_address is None and executor == "ray":
        return os.environ.get("RAY_ADDRESS") or None
    return ray_address


def assigned_gpu(gpu_ids: Sequence[int | str], visible: str | None) -> int | None:
    """The CUDA index, as torch numbers the GPUs this process sees, of the first GPU Ray assigned; None for none.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned GPUs, so the first is ``cuda:0``; where it
    does not (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``), the index is the GPU's place among
    the visible ones, or its id when all are visible.
    """
    if not gpu_ids:
        return None
    first = str(gpu_ids[0])
    seen = [v.strip() for v in visible.split(",")] if visible else []
    return seen.index(first) if first in seen else int(first)
