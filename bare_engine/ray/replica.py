"""One engine replica, run as a Ray actor: an engine thread works through chunks of candidate
indices while the driver hands in more and collects finished chunks (`exchange`).

The replica runs the pipeline's own StageChain over the pipeline's planner, so candidate i
comes out exactly as in a single-process run: it depends only on (seed, i).
"""

from __future__ import annotations

import dataclasses
import os
import threading

from bare_engine.pipeline.runner import StageChain, engine_stats
from bare_engine.pipeline.stages import Candidate

IDLE_WAIT_S = 1.0  # the engine thread re-checks for work (and for stop) this often when idle


class Replica:
    """Plain class; the driver wraps it with ray.remote(...) so its resources are set per run."""

    def __init__(self, job, slot: int, device: str | None, cpu_threads: int | None):
        self.slot = slot
        self._init_error: BaseException | None = None
        try:
            self._setup(job, device, cpu_threads)
        except BaseException as e:  # raised again by info(): the driver sees the error itself, not a dead actor
            self._init_error = e

    def _setup(self, job, device: str | None, cpu_threads: int | None) -> None:
        import torch

        from bare_engine.pipeline.run import build_engine

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        cfg = job.cfg
        if device is not None:  # Ray sets CUDA_VISIBLE_DEVICES: this replica's GPUs are cuda:0..tp-1
            cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, device=device))
        self.engine = build_engine(cfg)
        self.planner = job.make_planner(self.engine)
        self.chain = StageChain(self.engine, self.planner, cfg.stages)
        self._chunk_of: dict[int, int] = {}  # candidate index -> chunk id
        self._left: dict[int, int] = {}  # chunk id -> candidates not resolved yet
        self._resolved: dict[int, list[Candidate]] = {}  # chunk id -> its resolved candidates
        self._lock = threading.Condition()
        self._inbox: list[tuple[int, list[int]]] = []
        self._cutoff: int | None = None
        self._finished: list[tuple[int, list[Candidate]]] = []
        self._busy = 0  # candidates handed in and not returned yet (engine thread's count)
        self._stats = engine_stats(self.engine)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"replica-{self.slot}", daemon=True)
        self._thread.start()

    def info(self) -> dict:
        """Where this replica runs; raises the error that kept it from starting."""
        import ray

        if self._init_error is not None:
            raise self._init_error

        return {"slot": self.slot, "pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "device": str(self.engine.device),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def exchange(self, chunks: list[tuple[int, list[int]]], cutoff: int | None, wait_s: float) -> dict:
        """Hand in `chunks` (id, indices) and the driver's cutoff; wait up to `wait_s` for a chunk
        to finish; returns the finished chunks, the candidates still held and the token counts."""
        with self._lock:
            self._inbox += chunks
            if cutoff is not None:
                self._cutoff = cutoff if self._cutoff is None else min(self._cutoff, cutoff)
            self._busy += sum(len(indices) for _, indices in chunks)
            self._lock.notify_all()
            self._lock.wait_for(lambda: self._finished or self._error or not self._busy, timeout=wait_s)
            if self._error is not None:
                raise self._error
            finished, self._finished = self._finished, []
            return {"finished": finished, "busy": self._busy, "stats": self._stats}

    def stop(self) -> None:
        if self._init_error is not None:
            return
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    self._lock.wait_for(lambda: self._stop or self._inbox or self.chain.active, timeout=IDLE_WAIT_S)
                    if self._stop:
                        return
                    new, self._inbox, cutoff = self._inbox, [], self._cutoff
                if cutoff is not None:
                    self._drop_beyond(cutoff)
                for chunk_id, indices in new:
                    self._start_chunk(chunk_id, indices, cutoff)
                for cand in self.chain.step() if self.chain.active else []:
                    self._resolve(cand)
                self._publish()
        except BaseException as e:  # surfaced to the driver by the next exchange
            with self._lock:
                self._error = e
                self._lock.notify_all()

    def _start_chunk(self, chunk_id: int, indices: list[int], cutoff: int | None) -> None:
        self._left[chunk_id] = 0
        self._resolved[chunk_id] = []
        for index in indices:
            if cutoff is not None and index > cutoff:
                continue  # not needed any more
            self._chunk_of[index] = chunk_id
            self._left[chunk_id] += 1
            resolved = self.chain.start(self.planner.candidate(index))
            if resolved is not None:
                self._resolve(resolved)

    def _drop_beyond(self, cutoff: int) -> None:
        beyond = [i for i in self._chunk_of if i > cutoff]
        self.chain.abort([i for i in beyond if i in self.chain.active])
        for index in beyond:
            self._left[self._chunk_of.pop(index)] -= 1

    def _resolve(self, cand: Candidate) -> None:
        chunk_id = self._chunk_of.pop(cand.index)
        self._resolved[chunk_id].append(cand)
        self._left[chunk_id] -= 1

    def _publish(self) -> None:
        done = [chunk_id for chunk_id, left in self._left.items() if left == 0]
        finished = [(chunk_id, self._resolved.pop(chunk_id)) for chunk_id in done]
        for chunk_id in done:
            del self._left[chunk_id]
        with self._lock:
            self._finished += finished
            self._busy = len(self._chunk_of) + sum(len(ix) for _, ix in self._inbox)
            self._stats = engine_stats(self.engine)
            self._lock.notify_all()
