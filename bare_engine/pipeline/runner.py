"""The loop that drives the engine: launch candidates, chain stages, write records in index order.

Candidates are numbered 0, 1, 2, ...; the output holds the valid ones with the lowest
indices, in index order. Completions that arrive early wait in `OrderedOutput.done` until
every lower index is resolved; work beyond the last index the output needs is aborted.
`StageChain` (one engine) and `OrderedOutput` (the file) are also the two halves that the
data-parallel driver (bare_engine/ray/) uses: replicas run chains, the driver writes.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from bare_engine.errors import PromptTooLongError
from bare_engine.pipeline.config import PipelineConfig
from bare_engine.pipeline.records import ExistingOutput, RecordWriter
from bare_engine.pipeline.stages import Candidate, StagePlanner, parse_request_id, request_id

PRIOR = 4  # pseudo-observations of valid candidates
MIN_RATE = 0.05


@dataclass
class RunResult:
    records: int  # records in the output file now
    target: int
    written: int = 0  # records written by this run
    candidates: int = 0  # candidates behind this run's records (valid + dropped)
    drops: Counter = field(default_factory=Counter)
    models: dict[str, dict] = field(default_factory=dict)
    wall_s: float = 0.0
    interrupted: bool = False
    stop_reason: str | None = None  # why the run ended short of the target
    data_parallel: dict | None = None  # runs on Ray: replica count, cluster, each replica's share

    @property
    def complete(self) -> bool:
        return self.records >= self.target


class StageChain:
    """Candidates through their stages on one engine: each finished stage goes straight back
    to the engine as the next stage's request, so every model stays busy."""

    def __init__(self, engine, planner: StagePlanner, stages: tuple[str, ...]):
        self.engine, self.planner, self.stages = engine, planner, stages
        self.active: dict[int, tuple[Candidate, str]] = {}  # index -> (candidate, running stage)

    def start(self, cand: Candidate) -> Candidate | None:
        """Submit the first stage; returns the candidate when it resolved at once (prompt too long)."""
        return self._submit(cand, self.stages[0])

    def step(self) -> list[Candidate]:
        """One engine step; the candidates that resolved (valid or dropped)."""
        resolved = []
        for output in self.engine.step():
            cand = self._on_output(output)
            if cand is not None:
                resolved.append(cand)
        return resolved

    def abort(self, indices) -> None:
        for index in list(indices):
            _, stage = self.active.pop(index)
            self.engine.abort_request(request_id(stage, index))

    def _submit(self, cand: Candidate, stage: str) -> Candidate | None:
        rid, prompt, params, model = self.planner.request(cand, stage)
        try:
            self.engine.add_request(rid, prompt, params, model=model)
        except PromptTooLongError:
            if stage == self.stages[0] and self.planner.inputs is None:
                raise  # the few-shot prompt itself is too long: no candidate can work
            cand.drop_reason, cand.fields = f"{stage}:prompt_too_long", None
            return cand
        self.active[cand.index] = (cand, stage)
        return None

    def _on_output(self, output) -> Candidate | None:
        stage, index = parse_request_id(output.request_id)
        if index not in self.active or self.active[index][1] != stage:
            return None  # aborted earlier
        cand = self.active.pop(index)[0]
        self.planner.finish(cand, stage, output)
        later = self.stages[self.stages.index(stage) + 1:]
        if cand.drop_reason is None and later:
            return self._submit(cand, later[0])
        return cand


class OrderedOutput:
    """Resolved candidates in, records out in index order: the valid ones with the lowest indices."""

    def __init__(self, planner: StagePlanner, cfg: PipelineConfig, writer: RecordWriter,
                 start: ExistingOutput, result: RunResult):
        self.planner, self.cfg, self.writer, self.result = planner, cfg, writer, result
        self.written = start.count
        self.next_write = start.last_candidate + 1  # the lowest index not yet written or skipped
        self.done: dict[int, Candidate] = {}  # resolved, waiting for lower indices
        self.cutoff: int | None = None  # no index above this one is needed any more
        self.seen_valid = self.seen_resolved = 0

    @property
    def complete(self) -> bool:
        return self.written >= self.cfg.num

    def wanted(self) -> int:
        """How many candidates should be in flight to fill the output, at the valid rate seen so far."""
        needed = self.cfg.num - self.written - sum(c.valid for c in self.done.values())
        # Start from an optimistic prior so that a few early drops do not launch a flood of
        # work that would later be aborted.
        rate = max((self.seen_valid + PRIOR) / (self.seen_resolved + PRIOR), MIN_RATE)
        return math.ceil(needed / rate)

    def needs(self, index: int) -> bool:
        return index >= self.next_write and (self.cutoff is None or index <= self.cutoff)

    def resolve(self, cand: Candidate) -> None:
        if not self.needs(cand.index):
            return  # beyond the cutoff (its abort came too late) or already written
        self.done[cand.index] = cand
        self.seen_resolved += 1
        self.seen_valid += cand.valid
        needed = self.cfg.num - self.written
        valid = sorted(i for i, c in self.done.items() if c.valid)
        if len(valid) >= needed:  # the lowest valid indices already fill the output
            self.cutoff = valid[needed - 1]
            for i in [i for i in self.done if i > self.cutoff]:
                del self.done[i]

    def flush(self) -> None:
        while self.next_write in self.done and not self.complete:
            cand = self.done.pop(self.next_write)
            if cand.valid:
                self.writer.write(self.planner.record(cand, self.written))
                self.written += 1
                self.result.written += 1
            else:
                self.result.drops[cand.drop_reason] += 1
            self.result.candidates += 1
            self.next_write += 1


class PipelineRunner:
    def __init__(
        self,
        engine,
        planner: StagePlanner,
        cfg: PipelineConfig,
        writer: RecordWriter,
        start: ExistingOutput,
        progress=None,
    ):
        self.engine, self.planner, self.cfg = engine, planner, cfg
        self.progress = progress
        self.chain = StageChain(engine, planner, cfg.stages)
        self.result = RunResult(records=start.count, target=cfg.num)
        self.output = OrderedOutput(planner, cfg, writer, start, self.result)
        self.next_launch = start.last_candidate + 1
        self.limit = candidate_limit(cfg, planner)

    def run(self) -> RunResult:
        start_stats = engine_stats(self.engine)
        start = time.perf_counter()
        try:
            while not self.output.complete:
                self._launch()
                if not self.chain.active:
                    self.result.stop_reason = exhausted_reason(self.planner, self.limit)
                    break
                for cand in self.chain.step():
                    self._resolve(cand)
                self.output.flush()
                if self.progress is not None:
                    self.progress.refresh(self.output.written)
        except KeyboardInterrupt:
            self.result.interrupted = True
        finally:
            self.chain.abort(list(self.chain.active))
        self.result.wall_s = time.perf_counter() - start
        self.result.models = throughput(start_stats, engine_stats(self.engine), self.result.wall_s)
        self.result.records = self.output.written
        return self.result

    def _launch(self) -> None:
        want = min(self.cfg.in_flight_limit, self.output.wanted())
        while len(self.chain.active) < want and self.next_launch < self.limit:
            resolved = self.chain.start(self.planner.candidate(self.next_launch))
            self.next_launch += 1
            if resolved is not None:
                self._resolve(resolved)

    def _resolve(self, cand: Candidate) -> None:
        self.output.resolve(cand)
        if self.output.cutoff is not None:
            self.chain.abort([i for i in self.chain.active if i > self.output.cutoff])


def candidate_limit(cfg: PipelineConfig, planner: StagePlanner) -> int:
    return len(planner.inputs) if planner.inputs is not None else cfg.candidate_limit


def exhausted_reason(planner: StagePlanner, limit: int) -> str:
    if planner.inputs is not None:
        return f"all {limit} input candidates used"
    return f"max_candidates ({limit}) reached"


def engine_stats(engine) -> dict[str, tuple[int, int, float]]:
    return {
        name: (s.prompt_tokens, s.generated_tokens, s.busy_seconds)
        for name, s in ((n, engine.stats[n]) for n in engine.model_names)
    }


def throughput(before: dict, after: dict, wall_s: float) -> dict[str, dict]:
    out = {}
    for name, (p1, g1, b1) in after.items():
        p0, g0, b0 = before.get(name, (0, 0, 0.0))
        out[name] = {
            "prompt_tokens": p1 - p0,
            "generated_tokens": g1 - g0,
            "busy_s": round(b1 - b0, 3),
            "tokens_per_s": round((g1 - g0) / wall_s, 2) if wall_s > 0 else 0.0,
        }
    return out
