"""`bare-engine run --data-parallel N`: N engine replicas on Ray, one output file.

The driver is the work queue. Candidate indices go out in chunks, lowest first; a replica
with room gets the next chunk when it reports back (`Replica.exchange`). Finished chunks come
back as resolved candidates, and the pipeline's own OrderedOutput writes them in index order:
exactly `num` records, the lowest valid indices, byte-identical to a single-process run.

A replica that dies (killed, out of memory, node lost) or stops answering is replaced, up
to MAX_RESTARTS times per slot, and its unfinished chunks go back to the front of the queue:
a chunk counts only once it has come back whole, so nothing is lost or written twice.
"""

from __future__ import annotations

import heapq
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from bare_engine.errors import BareEngineError, ReplicaError
from bare_engine.pipeline.progress import Progress
from bare_engine.pipeline.records import ExistingOutput, RecordWriter
from bare_engine.pipeline.runner import (
    OrderedOutput, RunResult, candidate_limit, exhausted_reason, throughput,
)
from bare_engine.ray.cluster import check_resources, import_ray, ray_cluster, uses_gpus
from bare_engine.ray.replica import Replica

EXCHANGE_WAIT_S = 1.0  # a replica answers at least this often, finished chunk or not
HUNG_AFTER_S = 300.0  # an exchange unanswered for this long (beyond its wait): the replica is hung
START_TIMEOUT_S = float(os.environ.get("BARE_ENGINE_REPLICA_START_TIMEOUT_S", "600"))
MAX_RESTARTS = 3  # replacements per replica slot
POLL_S = 0.5
NAMESPACE = "bare-engine"


@dataclass(order=True)
class Chunk:
    first: int
    id: int = field(compare=False)
    indices: list[int] = field(compare=False)


@dataclass
class Slot:
    """One replica position; its actor is replaced when it dies."""

    slot: int
    actor: object = None
    ready_ref: object = None  # info() of an actor that is starting
    started_at: float = 0.0
    info: dict | None = None
    pending: object = None  # the exchange() in flight
    pending_since: float = 0.0
    assigned: dict[int, Chunk] = field(default_factory=dict)
    restarts: int = 0
    dead: bool = False
    stats: dict = field(default_factory=dict)  # the live actor's token counts
    past_stats: dict = field(default_factory=dict)  # summed over actors of this slot that died
    candidates: int = 0
    valid: int = 0

    @property
    def assigned_count(self) -> int:
        return sum(len(c.indices) for c in self.assigned.values())

    def total_stats(self) -> dict:
        return _add_stats(self.past_stats, self.stats)


def _add_stats(a: dict, b: dict) -> dict:
    return {name: tuple(x + y for x, y in zip(a.get(name, (0, 0, 0.0)), b.get(name, (0, 0, 0.0))))
            for name in sorted(set(a) | set(b))}


class _RecordsOnly:
    """Stands in for an engine when the driver builds its planner: the driver only writes
    records; prompts are built and tokenized on the replicas."""

    def tokenizer(self, model=None):
        raise RuntimeError("the data-parallel driver builds no prompts")


def run_data_parallel(job, writer: RecordWriter, existing: ExistingOutput, log: Callable[[str], None]) -> RunResult:
    cfg = job.cfg
    ray = import_ray()
    with ray_cluster(cfg.ray_address) as cluster:
        tp = cfg.engine.tensor_parallel_size
        gpus = tp if uses_gpus(cluster, cfg.engine.device) else 0
        check_resources(cluster, cfg.data_parallel, gpus, cpus_each=1 if gpus else tp)
        where = "a local Ray instance" if cluster.started_here else f"the Ray cluster at {cluster.address}"
        log(f"data parallel: {cfg.data_parallel} replicas on {where} "
            f"({cluster.nodes} node(s), {'%d GPU(s) each' % gpus if gpus else 'CPU, one thread each'})")
        runner = DataParallelRunner(ray, job, writer, existing, gpus, log)
        try:
            runner.start()
            result = runner.run()
        finally:
            runner.shutdown()
        result.data_parallel = runner.report(cluster.describe())
    return result


class DataParallelRunner:
    def __init__(self, ray, job, writer: RecordWriter, existing: ExistingOutput, gpus: int, log):
        self.ray, self.job, self.cfg, self.gpus, self.log = ray, job, job.cfg, gpus, log
        self.planner = job.make_planner(_RecordsOnly())
        self.result = RunResult(records=existing.count, target=self.cfg.num)
        self.output = OrderedOutput(self.planner, self.cfg, writer, existing, self.result)
        self.next_launch = existing.last_candidate + 1
        self.limit = candidate_limit(self.cfg, self.planner)
        self.queue: list[Chunk] = []  # a heap: the lowest indices go out first
        self.next_chunk_id = 0
        self.slots = [Slot(i) for i in range(self.cfg.data_parallel)]
        self.tag = uuid.uuid4().hex[:8]
        self.remote = ray.remote(Replica)
        self.progress = None
        self.reassigned = 0  # chunks handed out again after their replica died

    # --- replicas -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every replica and wait (bounded) until all are up; the first failure is the error."""
        for slot in self.slots:
            self._start_actor(slot)
        refs = [slot.ready_ref for slot in self.slots]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
        for slot in self.slots:
            if slot.ready_ref not in ready:
                raise ReplicaError(
                    f"replica {slot.slot} did not start within {START_TIMEOUT_S:.0f}s (the cluster has "
                    f"{self.ray.available_resources()} free; set BARE_ENGINE_REPLICA_START_TIMEOUT_S to wait longer)"
                )
            self._on_ready(slot, fatal=True)

    def _start_actor(self, slot: Slot) -> None:
        name = f"replica-{slot.slot}.{slot.restarts}-{self.tag}"
        cpus = 1 if self.gpus else self.cfg.engine.tensor_parallel_size  # CPU ranks: one core each
        options = dict(num_cpus=cpus, num_gpus=self.gpus, max_restarts=0, max_concurrency=2, name=name,
                       namespace=NAMESPACE)
        device, threads = ("cuda", None) if self.gpus else ("cpu", 1)
        slot.actor = self.remote.options(**options).remote(self.job, slot.slot, device, threads)
        slot.ready_ref = slot.actor.info.remote()
        slot.started_at = time.monotonic()
        slot.stats = {}

    def _on_ready(self, slot: Slot, fatal: bool) -> None:
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            slot.info = self.ray.get(ref, timeout=60)
        except Exception as e:  # noqa: BLE001 - every failure to start ends up here
            error = self._error(slot, e, "could not start")
            if fatal:
                raise error from None
            self._replace(slot, str(error))

    def _replace(self, slot: Slot, reason: str) -> None:
        """The slot's actor is gone: requeue its chunks and start another (bounded)."""
        self.log(f"replica {slot.slot}: {reason}; reassigning {len(slot.assigned)} chunk(s)")
        self.reassigned += len(slot.assigned)
        for chunk in slot.assigned.values():
            heapq.heappush(self.queue, chunk)
        slot.assigned, slot.pending, slot.info = {}, None, None
        slot.past_stats, slot.stats = slot.total_stats(), {}
        self._kill(slot)
        slot.restarts += 1
        if slot.restarts > MAX_RESTARTS:
            slot.dead = True
            if all(s.dead for s in self.slots):
                raise ReplicaError(f"every replica failed (replica {slot.slot}: {reason})")
            return
        self._start_actor(slot)

    def _kill(self, slot: Slot) -> None:
        if slot.actor is not None:
            try:
                self.ray.kill(slot.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
            slot.actor = None

    def shutdown(self) -> None:
        for slot in self.slots:
            self._kill(slot)

    def _error(self, slot: Slot, e: Exception, what: str) -> BareEngineError:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BareEngineError):
            return cause  # bad input found on the replica (a model that does not load, a prompt too long)
        if cause is not None:
            return ReplicaError(f"replica {slot.slot} {what}: {type(cause).__name__}: {_first_line(cause)}")
        return ReplicaError(f"replica {slot.slot} {what}: {_first_line(e)}")

    # --- the work queue ------------------------------------------------------------------

    def run(self) -> RunResult:
        self.progress = Progress(self._stats_view(), self.cfg.num, self.output.written, enabled=self.cfg.progress)
        start = time.perf_counter()
        try:
            while not self.output.complete:
                self._plan()
                self._assign()
                if self._exhausted():
                    self.result.stop_reason = exhausted_reason(self.planner, self.limit)
                    break
                self._collect()
                self.output.flush()
                self.progress.engine = self._stats_view()
                self.progress.refresh(self.output.written)
        except KeyboardInterrupt:
            self.result.interrupted = True
        finally:
            self.progress.close()
        self.result.wall_s = time.perf_counter() - start
        self.result.models = throughput({}, self._total_stats(), self.result.wall_s)
        self.result.records = self.output.written
        return self.result

    def _live(self) -> list[Slot]:
        return [s for s in self.slots if not s.dead]

    def _in_flight(self) -> int:
        return sum(s.assigned_count for s in self.slots) + sum(len(c.indices) for c in self.queue)

    def _plan(self) -> None:
        """Queue new chunks until the work in flight covers what the output still wants."""
        live = max(1, len(self._live()))
        want = min(live * self.cfg.in_flight_limit, self.output.wanted())
        size = max(1, min(self.cfg.engine.max_num_seqs // 4, math.ceil(want / live)))
        while self._in_flight() < want and self.next_launch < self.limit:
            end = min(self.next_launch + size, self.limit)
            indices = list(range(self.next_launch, end))
            heapq.heappush(self.queue, Chunk(indices[0], self.next_chunk_id, indices))
            self.next_chunk_id += 1
            self.next_launch = end

    def _assign(self) -> None:
        """Chunks go one at a time to the started, idle replica holding the fewest candidates
        (up to its room); then each idle replica with work gets an exchange."""
        idle = [s for s in self._live() if s.info is not None and s.pending is None]
        given: dict[int, list[Chunk]] = {s.slot: [] for s in idle}
        while self.queue and idle:
            slot = min(idle, key=lambda s: s.assigned_count)
            if slot.assigned_count >= self.cfg.in_flight_limit:
                break
            chunk = self._take()
            if chunk is None:
                break
            slot.assigned[chunk.id] = chunk
            given[slot.slot].append(chunk)
        for slot in idle:
            if slot.assigned:
                chunks = [(c.id, c.indices) for c in given[slot.slot]]
                slot.pending = slot.actor.exchange.remote(chunks, self.output.cutoff, EXCHANGE_WAIT_S)
                slot.pending_since = time.monotonic()

    def _take(self) -> Chunk | None:
        """The lowest queued chunk, less the indices no longer needed; None when none is left."""
        while self.queue:
            chunk = heapq.heappop(self.queue)
            chunk.indices = [i for i in chunk.indices if self.output.needs(i)]
            if chunk.indices:
                return chunk
        return None

    def _exhausted(self) -> bool:
        busy = any(s.assigned or s.pending is not None for s in self.slots)
        return not busy and not self.queue and self.next_launch >= self.limit

    def _collect(self) -> None:
        """Wait (at most POLL_S) for replies; handle each finished exchange, start-up, or failure."""
        waiting = {s.pending: s for s in self._live() if s.pending is not None}
        waiting.update({s.ready_ref: s for s in self._live() if s.ready_ref is not None})
        if not waiting:
            time.sleep(POLL_S)  # nothing in flight (every replica is starting over): re-plan shortly
            return
        ready, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=POLL_S, fetch_local=False)
        for ref in ready:
            slot = waiting[ref]
            if ref == slot.ready_ref:
                self._on_ready(slot, fatal=False)
            else:
                self._on_reply(slot, ref)
        self._check_hung()

    def _on_reply(self, slot: Slot, ref) -> None:
        slot.pending = None
        try:
            reply = self.ray.get(ref, timeout=60)
        except self.ray.exceptions.RayActorError as e:
            self._replace(slot, f"died ({_first_line(e)})")
            return
        except self.ray.exceptions.RayTaskError as e:
            raise self._error(slot, e, "failed") from None
        slot.stats = reply["stats"]
        for chunk_id, cands in reply["finished"]:
            del slot.assigned[chunk_id]
            slot.candidates += len(cands)
            for cand in cands:
                slot.valid += cand.valid
                self.output.resolve(cand)

    def _check_hung(self) -> None:
        now = time.monotonic()
        for slot in self._live():
            if slot.pending is not None and now - slot.pending_since > EXCHANGE_WAIT_S + HUNG_AFTER_S:
                self._replace(slot, f"did not answer for {HUNG_AFTER_S:.0f}s")
            elif slot.ready_ref is not None and now - slot.started_at > START_TIMEOUT_S:
                self._replace(slot, f"did not start within {START_TIMEOUT_S:.0f}s")

    # --- throughput ----------------------------------------------------------------------

    def _total_stats(self) -> dict:
        total: dict = {}
        for slot in self.slots:
            total = _add_stats(total, slot.total_stats())
        return total

    def _stats_view(self):
        """An engine-shaped view of the token counts summed over replicas (for Progress)."""
        total = self._total_stats() or {name: (0, 0, 0.0) for name in self.cfg.model_names}
        stats = {name: SimpleNamespace(prompt_tokens=p, generated_tokens=g, busy_seconds=b)
                 for name, (p, g, b) in total.items()}
        return SimpleNamespace(model_names=list(stats), stats=stats)

    def report(self, cluster: dict) -> dict:
        wall = self.result.wall_s
        replicas = []
        for slot in self.slots:
            models = throughput({}, slot.total_stats(), wall)
            replicas.append({
                "replica": slot.slot, "node": (slot.info or {}).get("node"), "restarts": slot.restarts,
                "candidates": slot.candidates, "valid": slot.valid,
                "tokens_per_s": {name: m["tokens_per_s"] for name, m in models.items()},
            })
        return {"replicas": self.cfg.data_parallel, "gpus_per_replica": self.gpus, "cluster": cluster,
                "chunks_reassigned": self.reassigned, "per_replica": replicas}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
