"""Which model steps next when several share the engine.

One forward pass runs one model, so the engine asks a policy for an order of
candidates and steps the first one that has a non-empty batch. The default policy:

1. candidates are the models with running or waiting sequences;
2. a candidate that has not stepped for ``max_skipped`` steps goes first, so no model starves;
3. when memory is tight (a model's requests wait for blocks, or the pool is nearly full)
   the *drain* model goes first: in BARE this is the refiner, whose requests end the
   pipeline and free their blocks for good;
4. otherwise the candidate with the most runnable sequences goes first: a bigger batch
   spreads the weight reads of a step over more tokens.

Replace it by passing any object with ``order(engine_view) -> list[str]`` to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InterleavePolicy:
    drain_model: str | None = None
    max_skipped: int = 4
    tight_free_fraction: float = 0.05
    _last_step: dict[str, int] = field(default_factory=dict)
    _steps: int = 0

    def order(self, scheduler) -> list[str]:
        candidates = [m for m in scheduler.pools if scheduler.has_work(m)]
        if len(candidates) <= 1:
            return candidates

        def skipped(m: str) -> int:
            return self._steps - self._last_step.get(m, -1) - 1

        def load(m: str) -> int:
            return len(scheduler.running[m]) + min(len(scheduler.waiting[m]), scheduler.max_num_seqs)

        tight = any(scheduler.waiting_for_memory(m) for m in candidates) or any(
            scheduler.pools[m].num_free_blocks < self.tight_free_fraction * scheduler.pools[m].num_blocks
            for m in candidates
        )

        def priority(m: str) -> tuple:
            starving = skipped(m) >= self.max_skipped
            draining = tight and m == self.drain_model
            return (not starving, not draining, -load(m), -skipped(m))

        return sorted(candidates, key=priority)

    def stepped(self, model: str) -> None:
        self._last_step[model] = self._steps
        self._steps += 1
