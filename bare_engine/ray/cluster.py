"""Joining or starting a Ray cluster, with every wait bounded, and checking it can hold the replicas."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field

from bare_engine.errors import ConfigError

RAY_EXTRA = 'pip install -e ".[ray]"'
CONNECT_TIMEOUT_S = 10.0
# Ray runs workers at nice 15 by default; replicas are the job's main work, so they run at the
# driver's priority (it matters on CPU hosts shared with other jobs).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"data parallelism runs on Ray, which is not installed: {RAY_EXTRA} "
                          "(or pip install \"bare-engine[ray]\")") from None
    return ray


@dataclass
class Cluster:
    address: str  # the GCS address, or "local" for an instance this run started
    started_here: bool
    resources: dict[str, float] = field(default_factory=dict)
    nodes: int = 0

    def describe(self) -> dict:
        return {"address": self.address, "started_here": self.started_here, "nodes": self.nodes,
                "resources": {k: self.resources[k] for k in ("CPU", "GPU") if k in self.resources}}


@contextmanager
def ray_cluster(address: str = "", num_cpus: int | None = None):
    """Yields the Cluster this process is connected to: the one already initialised in this
    process, the one at `address` (host:port or "auto"), or a new local instance that is
    stopped on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield _describe(ray, ray.get_runtime_context().gcs_address, started_here=False)
        return
    if address:
        resolved = resolve_address(ray, address)
        check_reachable(resolved)
        try:
            ray.init(address=resolved, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, AuthenticationError, RuntimeError...
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot join the Ray cluster at {address}: {detail}") from None
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False, _system_config=LOCAL_SYSTEM_CONFIG)
    try:
        yield _describe(ray, "local" if not address else resolved, started_here=not address)
    finally:
        ray.shutdown()


def _describe(ray, address: str, started_here: bool) -> Cluster:
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Cluster(address, started_here, dict(ray.cluster_resources()), nodes)


def resolve_address(ray, address: str) -> str:
    """host:port for `address`; "auto" is the cluster `ray start` last started on this machine."""
    if address != "auto":
        return address
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    if not found or found == "auto":
        raise ConfigError("--ray-address auto: no running Ray cluster found on this machine (start one with "
                          "`ray start --head`, or give its host:port)")
    return found


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless a TCP connection to the cluster's GCS opens within `timeout_s`
    (ray.init itself retries an unreachable address for minutes)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray-address must be host:port or auto, got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ConfigError(f"cannot reach the Ray cluster at {address} within {timeout_s:.0f}s: {reason}") from None


def check_resources(cluster: Cluster, replicas: int, gpus_each: int, cpus_each: int = 1) -> None:
    """ConfigError when the cluster cannot ever hold `replicas` replicas (they would wait forever)."""
    if gpus_each:
        have = int(cluster.resources.get("GPU", 0))
        if replicas * gpus_each > have:
            raise ConfigError(
                f"data_parallel {replicas} x tensor_parallel_size {gpus_each} needs {replicas * gpus_each} GPUs, "
                f"but the Ray cluster has {have}"
            )
    have = int(cluster.resources.get("CPU", 0))
    if replicas * cpus_each > have:
        each = "one per replica" if cpus_each == 1 else f"{cpus_each} per replica"
        raise ConfigError(f"data_parallel {replicas} needs {replicas * cpus_each} CPUs ({each}), "
                          f"but the Ray cluster has {have}")


def uses_gpus(cluster: Cluster, device: str) -> bool:
    """Whether replicas run on GPUs: device cuda*, or auto on a cluster that has GPUs."""
    if device == "auto":
        return cluster.resources.get("GPU", 0) > 0
    return device.startswith("cuda")
