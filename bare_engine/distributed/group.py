"""The collectives of one tensor-parallel engine, and their single-rank stand-in.

Each engine owns its own store and process group objects (never torch.distributed's
process-global default group), so two engines in one process, or one after the other,
never share state. The store listens on a port the OS picks (port 0): no fixed ports.
Collectives use NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

LOCALHOST = "127.0.0.1"
# A collective only waits for the other ranks' share of the same step, so a long wait means a
# rank is gone or stuck; this bounds it well inside the 30 s in which a failure must surface.
COLLECTIVE_TIMEOUT = timedelta(seconds=20)
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)


class TPGroup:
    """One rank's view of the engine's process group."""

    def __init__(self, pg, rank: int, size: int, on_failure: Callable[[Exception], Exception] | None = None):
        self.pg = pg
        self.rank = rank
        self.size = size
        # Turns a failed collective into the error to raise (the driver names the dead rank).
        self.on_failure = on_failure

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place."""
        self._wait(self.pg.allreduce([x]))
        return x

    def gather(self, x: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's ``x`` along the last dimension on rank 0; other ranks get None."""
        x = x.contiguous()
        opts = dist.GatherOptions()
        opts.rootRank = 0
        if self.rank != 0:
            self._wait(self.pg.gather([], [x], opts))
            return None
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self._wait(self.pg.gather([parts], [x], opts))
        return torch.cat(parts, dim=-1)

    def _wait(self, work) -> None:
        try:
            work.wait()
        except RuntimeError as exc:
            if self.on_failure is None:
                raise
            raise self.on_failure(exc) from None


def create_store(world_size: int) -> dist.TCPStore:
    """The driver's store, on a port the OS assigns (read it back from ``store.port``)."""
    return dist.TCPStore(LOCALHOST, 0, world_size, True, timeout=RENDEZVOUS_TIMEOUT, wait_for_workers=False)


def connect_store(port: int, world_size: int) -> dist.TCPStore:
    return dist.TCPStore(LOCALHOST, port, world_size, False, timeout=RENDEZVOUS_TIMEOUT)


def join_group(store, rank: int, size: int, device: torch.device, on_failure=None) -> TPGroup:
    """Build this rank's process group (blocks until every rank has joined)."""
    store = dist.PrefixStore("tp", store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = COLLECTIVE_TIMEOUT
        pg = dist.ProcessGroupNCCL(store, rank, size, opts)
    else:
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = COLLECTIVE_TIMEOUT
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=LOCALHOST)]
        pg = dist.ProcessGroupGloo(store, rank, size, opts)
    return TPGroup(pg, rank, size, on_failure)
