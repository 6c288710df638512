"""A tensor-parallel worker: ranks 1..N-1, started by the driver with torch.multiprocessing spawn.

It holds its shard of every model's weights and KV cache and runs the forward pass of each
step the driver sends (a ``message.encode_step`` message). Set-up commands (load, allocate the
KV cache, shut down) are small pickled tuples; each gets a reply. The worker ignores Ctrl-C
(the driver shuts it down), exits when the driver's end of the pipe closes, and exits when
its parent process is gone even while blocked in a collective: it never outlives the driver.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

STEP = b"S"
COMMAND = b"C"
PARENT_POLL_S = 1.0


@dataclass
class WorkerSettings:
    rank: int
    size: int
    port: int  # the driver's store
    device: str
    num_threads: int
    attention_backend: str


@dataclass
class ModelLoad:
    """A model every rank loads its shard of (index in the list = model index in step messages)."""

    name: str
    spec: object  # a model directory, or a ModelSpec (LoRA adapter + base)
    max_model_len: int
    dtype: torch.dtype


@dataclass
class KVPool:
    """One shared block pool: its models, block count and block size (the same on every rank)."""

    models: list[str]
    num_blocks: int
    block_size: int


@dataclass
class _Shard:
    model: torch.nn.Module
    max_model_len: int
    dtype: torch.dtype
    kv_caches: list | None = None
    graphs: object = None


def worker_main(settings: WorkerSettings, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())
    torch.set_num_threads(settings.num_threads)
    try:
        conn.send(("hello", os.getpid()))
        _Worker(settings, conn).serve()
    except EOFError:
        pass  # the driver closed the pipe: nothing left to do
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        _report(conn, exc)
        _exit(1)
    _exit(0)


def _exit_with_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _report(conn, exc: BaseException) -> None:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    try:
        conn.send(("error", type(exc).__name__, detail, traceback.format_exc()))
    except (OSError, EOFError):
        pass


def _exit(code: int) -> None:
    # Skip interpreter teardown: process-group destructors may block on peers that are gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Worker:
    def __init__(self, settings: WorkerSettings, conn):
        from bare_engine.model.layers.attention import select_backend
        from bare_engine.distributed.group import connect_store, join_group

        self.settings = settings
        self.conn = conn
        self.device = torch.device(settings.device)
        self.store = connect_store(settings.port, settings.size)
        self.group = join_group(self.store, settings.rank, settings.size, self.device)
        self.backend = select_backend(settings.attention_backend, self.device)
        self.shards: list[_Shard] = []
        self.names: list[str] = []

    def serve(self) -> None:
        while True:
            data = self.conn.recv_bytes()
            if data[:1] == STEP:
                self.step(data[1:])
                continue
            command, payload = pickle.loads(data[1:])
            if command == "shutdown":
                self.conn.send(("ok", None))
                return
            self.conn.send(("ok", getattr(self, f"do_{command}")(payload)))

    def do_load(self, loads: list[ModelLoad]) -> int | None:
        """Load this rank's shard of each model; reply with the device's free memory (CUDA)."""
        from bare_engine.model.config import load_model_config
        from bare_engine.model.loader import load_model
        from bare_engine.model.source import resolve_model_source

        for load in loads:
            source = resolve_model_source(load.spec)
            config = load_model_config(source.weights_dir)
            hook = source.adapter.merge if source.adapter else None
            model = load_model(config, Path(source.weights_dir), self.device, load.dtype, load.max_model_len, hook, self.group)
            if source.adapter:
                source.adapter.check_all_used()
            self.shards.append(_Shard(model, load.max_model_len, load.dtype))
            self.names.append(load.name)
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return None

    def do_kv(self, payload: tuple[list[KVPool], list[int] | None]) -> None:
        """Allocate each pool's blocks with this rank's KV heads; capture decode graphs in the driver's order."""
        from bare_engine.worker.forward import allocate_kv_cache

        pools, graph_sizes = payload
        for pool in pools:
            shards = [self._shard(name) for name in pool.models]
            model = shards[0].model
            c = model.config
            caches = allocate_kv_cache(
                c.num_layers, pool.num_blocks, pool.block_size, model.num_kv_heads, c.head_dim, shards[0].dtype, self.device
            )
            for shard in shards:
                shard.kv_caches = caches
                if graph_sizes:
                    shard.graphs = self._capture(shard, graph_sizes, pool.block_size)

    def _shard(self, name: str) -> _Shard:
        return self.shards[self.names.index(name)]

    def _capture(self, shard: _Shard, sizes: list[int], block_size: int):
        from bare_engine.worker.cuda_graphs import DecodeGraphs

        if self.device.type != "cuda" or self.backend.name == "torch":
            return None
        max_blocks = -(-shard.max_model_len // block_size)
        try:
            with torch.inference_mode():
                return DecodeGraphs(shard.model, shard.kv_caches, self.backend, sizes, max_blocks, block_size, self.device)
        except RuntimeError:
            return None  # as the driver does: eager, never worse than no graphs

    @torch.inference_mode()
    def step(self, data: bytes) -> None:
        from bare_engine.worker.forward import run_forward
        from bare_engine.distributed.message import decode_step

        model_index, inputs = decode_step(data, self.device)
        shard = self.shards[model_index]
        run_forward(shard.model, shard.kv_caches, self.backend, shard.graphs,
                    inputs.input_ids, inputs.positions, inputs.meta, inputs.logits_indices)
