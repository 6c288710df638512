"""The driver's handle on its tensor-parallel workers: start, set-up commands, steps, failures, shutdown.

Rank 0 is the calling process; ranks 1..N-1 are spawned here. Every wait is bounded and
watches the workers' process sentinels, so a worker that dies (killed, out of memory, an
exception) surfaces as a ``TensorParallelError`` naming its rank and cause, never a hang.
After a failure the remaining workers are stopped and every later call raises the same error.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
import weakref
from multiprocessing.connection import wait

import torch
import torch.multiprocessing

from bare_engine.distributed.group import COLLECTIVE_TIMEOUT, create_store, join_group
from bare_engine.distributed.message import encode_step
from bare_engine.distributed.worker import COMMAND, STEP, KVPool, ModelLoad, WorkerSettings, worker_main
from bare_engine.errors import BareEngineError, TensorParallelError

logger = logging.getLogger(__name__)

_MAIN_GUARD_HINT = (
    " before it started; if a script creates the engine, do so under `if __name__ == \"__main__\":` "
    "(workers are spawned, which imports the script again)"
)
START_TIMEOUT_S = 300  # spawn, import torch
LOAD_TIMEOUT_S = 3600  # a large shard from a slow disk
COMMAND_TIMEOUT_S = 600
FAILURE_GRACE_S = 5  # after a failed collective, time for the dead worker's exit to register
STOP_GRACE_S = 10


class TPExecutor:
    def __init__(self, devices: list[torch.device], attention_backend: str, num_threads: int | None = None):
        self.size = len(devices)
        self.error: BareEngineError | None = None
        self.store = create_store(self.size)
        ctx = torch.multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        threads = num_threads or torch.get_num_threads()
        for rank in range(1, self.size):
            ours, theirs = ctx.Pipe(duplex=True)
            settings = WorkerSettings(rank, self.size, self.store.port, str(devices[rank]), threads, attention_backend)
            proc = ctx.Process(target=worker_main, args=(settings, theirs), name=f"bare-engine-tp-rank{rank}", daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.conns, 2.0)
        try:
            self.collect("start", START_TIMEOUT_S)
            self.group = join_group(self.store, 0, self.size, devices[0], on_failure=self._collective_failed)
        except BaseException:
            self.shutdown()
            raise
        self._unwatch = None
        if devices[0].type == "cuda":
            self._watch_for_deaths()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # ----- set-up commands ----------------------------------------------------------------

    def load(self, loads: list[ModelLoad]) -> None:
        """Start loading every model's shards on the workers (collect with ``collect("load", ...)``)."""
        self.command("load", loads)

    def allocate_kv(self, pools: list[KVPool], graph_batch_sizes: list[int] | None) -> None:
        self.command("kv", (pools, graph_batch_sizes))

    def command(self, name: str, payload) -> None:
        self._check()
        data = COMMAND + pickle.dumps((name, payload))
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(data)
            except OSError:
                raise self._worker_failed(rank, self._death(rank)) from None

    def collect_loaded(self) -> list:
        """Wait for every worker to load its shards; each one's free device memory afterwards."""
        return self.collect("load", LOAD_TIMEOUT_S)

    def collect(self, what: str, timeout_s: float = COMMAND_TIMEOUT_S) -> list:
        """Each worker's reply to the last command, in rank order."""
        return [self._reply(rank, what, timeout_s) for rank in range(1, self.size)]

    def _reply(self, rank: int, what: str, timeout_s: float):
        conn, proc = self.conns[rank - 1], self.procs[rank - 1]
        deadline = time.monotonic() + timeout_s
        while True:
            ready = wait([conn, proc.sentinel], timeout=max(0.0, deadline - time.monotonic()))
            if conn in ready:
                message = _receive(conn)
                if message is None:
                    raise self._worker_failed(rank, self._death(rank))
                if message[0] == "error":
                    raise self._worker_error(rank, message)
                return message[1]
            if proc.sentinel in ready:
                hint = _MAIN_GUARD_HINT if what == "start" else ""
                raise self._worker_failed(rank, self._death(rank) + hint)
            if time.monotonic() >= deadline:
                raise self._worker_failed(rank, f"did not finish {what} within {timeout_s:.0f} s")

    # ----- steps --------------------------------------------------------------------------

    def send_step(self, model_index: int, inputs) -> None:
        """Hand one step's ``StepInputs`` of model ``model_index`` to every worker; the driver then runs its own share."""
        self._check()
        message = STEP + encode_step(model_index, inputs)
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(message)
            except OSError:
                raise self._worker_failed(rank, self._death(rank)) from None

    def _collective_failed(self, exc: Exception) -> BareEngineError:
        """The error for a collective that failed on the driver: the dead or failed worker if one is found."""
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline:
            for rank in range(1, self.size):
                conn, proc = self.conns[rank - 1], self.procs[rank - 1]
                message = _receive(conn) if _readable(conn) else None
                if message is not None and message[0] == "error":
                    return self._worker_error(rank, message)
                if not proc.is_alive():
                    return self._worker_failed(rank, self._death(rank))
            time.sleep(0.05)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "timed out" in reason.lower() or "timeout" in reason.lower():
            cause = f"a rank stopped answering: a collective waited {COLLECTIVE_TIMEOUT.total_seconds():.0f} s ({reason})"
        else:
            cause = f"a collective failed: {reason}"
        return self._fail(TensorParallelError(f"tensor-parallel group of {self.size} ranks failed, {cause}"))

    # ----- failures -----------------------------------------------------------------------

    def _death(self, rank: int) -> str:
        proc = self.procs[rank - 1]
        proc.join(FAILURE_GRACE_S)
        code = proc.exitcode
        if code is None:
            return "closed its connection"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (by a user, or by the out-of-memory killer)" if name == "SIGKILL" else ""
            return f"died: killed by {name}{hint}"
        return f"died: exited with code {code}"

    def _worker_error(self, rank: int, message: tuple) -> BareEngineError:
        _, class_name, detail, trace = message
        import bare_engine.errors as errors

        cls = getattr(errors, class_name, None)
        if isinstance(cls, type) and issubclass(cls, BareEngineError):  # bad input: its message says it all
            logger.debug("tensor-parallel worker rank %d:\n%s", rank, trace)
            return self._fail(cls(f"tensor-parallel worker rank {rank}: {detail.split(': ', 1)[-1]}"))
        logger.error("tensor-parallel worker rank %d failed:\n%s", rank, trace)
        return self._worker_failed(rank, f"failed: {detail}")

    def _worker_failed(self, rank: int, cause: str) -> BareEngineError:
        return self._fail(TensorParallelError(f"tensor-parallel worker rank {rank} {cause}"))

    def _fail(self, error: BareEngineError) -> BareEngineError:
        if self.error is None:
            self.error = error
            self.shutdown()
        return self.error

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if not self._finalizer.alive:
            raise TensorParallelError("the tensor-parallel workers were shut down")

    def _watch_for_deaths(self) -> None:
        """CUDA: NCCL kernels wait on the GPU for a dead peer forever, so abort the group when a worker dies.

        The aborted collectives fail, and the failure path names the dead rank (gloo fails by itself).
        """
        stop_read, self._unwatch = os.pipe()
        sentinels = [p.sentinel for p in self.procs]
        pg = self.group.pg

        def watch():
            ready = wait(sentinels + [stop_read])
            os.close(stop_read)
            if stop_read not in ready and hasattr(pg, "abort"):
                logger.error("a tensor-parallel worker died; aborting the NCCL group")
                pg.abort()

        threading.Thread(target=watch, name="tp-worker-watch", daemon=True).start()

    # ----- shutdown -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every worker (politely, then by signal); idempotent."""
        if getattr(self, "_unwatch", None) is not None:
            try:
                os.write(self._unwatch, b"x")
            except OSError:
                pass  # the watcher already saw a death and left
            os.close(self._unwatch)
            self._unwatch = None
        if self._finalizer.alive:
            self._finalizer.detach()
            _stop_workers(self.procs, self.conns, STOP_GRACE_S)
        self.group = None
        self.store = None


def _readable(conn) -> bool:
    try:
        return conn.poll()
    except OSError:
        return True  # the peer is gone: the read says so


def _receive(conn):
    """The next message, or None when the worker's end is closed."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _stop_workers(procs, conns, grace_s: float) -> None:
    data = COMMAND + pickle.dumps(("shutdown", None))
    for conn in conns:
        try:
            conn.send_bytes(data)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(2)
        if proc.is_alive():
            proc.kill()
            proc.join(2)
    for conn in conns:
        conn.close()
