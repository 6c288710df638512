"""The loop that drives the engine: launch candidates, chain stages, write records in index order.

Candidates are numbered 0, 1, 2, ...; the output holds the valid ones with the lowest
indices, in index order. Completions that arrive early wait in `done` until every lower
index is resolved; work beyond the last index the output needs is aborted.
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

    @property
    def complete(self) -> bool:
        return self.records >= self.target


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
        self.engine, self.planner, self.cfg, self.writer = engine, planner, cfg, writer
        self.progress = progress
        self.written = start.count
        self.next_write = self.next_launch = start.last_candidate + 1
        inputs = planner.inputs
        self.limit = len(inputs) if inputs is not None else cfg.candidate_limit
        self.active: dict[int, tuple[Candidate, str]] = {}  # index -> (candidate, running stage)
        self.done: dict[int, Candidate] = {}  # resolved, waiting for lower indices
        self.seen_valid = self.seen_resolved = 0
        self.result = RunResult(records=start.count, target=cfg.num)

    def run(self) -> RunResult:
        start_stats = _stats(self.engine)
        start = time.perf_counter()
        try:
            while self.written < self.cfg.num:
                self._launch()
                if not self.active:
                    self.result.stop_reason = self._exhausted_reason()
                    break
                for output in self.engine.step():
                    self._on_output(output)
                self._flush()
                if self.progress is not None:
                    self.progress.refresh(self.written)
        except KeyboardInterrupt:
            self.result.interrupted = True
        finally:
            self._abort(list(self.active))
        self.result.wall_s = time.perf_counter() - start
        self.result.models = _throughput(start_stats, _stats(self.engine), self.result.wall_s)
        self.result.records = self.written
        return self.result

    def _exhausted_reason(self) -> str:
        if self.planner.inputs is not None:
            return f"all {self.limit} input candidates used"
        return f"max_candidates ({self.limit}) reached"

    def _launch(self) -> None:
        needed = self.cfg.num - self.written - sum(c.valid for c in self.done.values())
        # Expected share of valid candidates, starting from an optimistic prior so that a few
        # early drops do not launch a flood of work that would later be aborted.
        rate = max((self.seen_valid + PRIOR) / (self.seen_resolved + PRIOR), MIN_RATE)
        want = min(self.cfg.in_flight_limit, math.ceil(needed / rate))
        while len(self.active) < want and self.next_launch < self.limit:
            cand = self.planner.candidate(self.next_launch)
            self._submit(cand, self.cfg.stages[0])
            self.next_launch += 1

    def _submit(self, cand: Candidate, stage: str) -> None:
        rid, prompt, params, model = self.planner.request(cand, stage)
        try:
            self.engine.add_request(rid, prompt, params, model=model)
        except PromptTooLongError:
            if stage == self.cfg.stages[0] and self.planner.inputs is None:
                raise  # the few-shot prompt itself is too long: no candidate can work
            cand.drop_reason, cand.fields = f"{stage}:prompt_too_long", None
            self._resolve(cand)
            return
        self.active[cand.index] = (cand, stage)

    def _on_output(self, output) -> None:
        stage, index = parse_request_id(output.request_id)
        if index not in self.active or self.active[index][1] != stage:
            return  # aborted earlier
        cand = self.active[index][0]
        self.planner.finish(cand, stage, output)
        stages = self.cfg.stages
        later = stages[stages.index(stage) + 1:]
        del self.active[index]
        if cand.drop_reason is None and later:
            self._submit(cand, later[0])  # straight back to the engine: both models stay busy
        else:
            self._resolve(cand)

    def _resolve(self, cand: Candidate) -> None:
        self.done[cand.index] = cand
        self.seen_resolved += 1
        self.seen_valid += cand.valid
        self._abort_beyond_cutoff()

    def _abort_beyond_cutoff(self) -> None:
        """Once the lowest valid indices already fill the output, higher indices are not needed."""
        needed = self.cfg.num - self.written
        valid = sorted(i for i, c in self.done.items() if c.valid)
        if len(valid) < needed:
            return
        cutoff = valid[needed - 1]
        self._abort([i for i in self.active if i > cutoff])
        for i in [i for i in self.done if i > cutoff]:
            del self.done[i]

    def _abort(self, indices: list[int]) -> None:
        for index in indices:
            _, stage = self.active.pop(index)
            self.engine.abort_request(request_id(stage, index))

    def _flush(self) -> None:
        while self.next_write in self.done and self.written < self.cfg.num:
            cand = self.done.pop(self.next_write)
            if cand.valid:
                self.writer.write(self.planner.record(cand, self.written))
                self.written += 1
                self.result.written += 1
            else:
                self.result.drops[cand.drop_reason] += 1
            self.result.candidates += 1
            self.next_write += 1


def _stats(engine) -> dict[str, tuple[int, int, float]]:
    return {
        name: (s.prompt_tokens, s.generated_tokens, s.busy_seconds)
        for name, s in ((n, engine.stats[n]) for n in engine.model_names)
    }


def _throughput(before: dict, after: dict, wall_s: float) -> dict[str, dict]:
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
