"""Continuous batching with chunked prefill and preemption, for one or several models.

Each step runs one model's batch. Within a model:
1. running sequences get their tokens first: decodes (one token each), then the
   remaining chunks of partly prefilled prompts, in arrival order, within the step's
   token budget;
2. when the pool has no block for a running sequence, the newest running sequence of
   that model is preempted (blocks freed, recomputed later from its tokens);
3. waiting sequences are admitted in arrival order (preempted ones keep their
   original arrival, so they resume before newer requests), with prefix-cache hits,
   while the budget, ``max_num_seqs`` and free blocks allow. Blocks needed by older
   waiting sequences of another model on the same pool are held back for them.

Prompt blocks enter the prefix cache when their computation is scheduled, not after it ran (as
vLLM does): a step writes every layer's new K/V before that layer's attention reads any, so a
prompt admitted later in the same step can already read them. The BARE job's 32 identical
few-shot prompts then cost one prefill, not one per request admitted in the first step.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from bare_engine.engine.block_manager import BlockManager
from bare_engine.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    model: str
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, pools: dict[str, BlockManager], max_num_seqs: int, max_num_batched_tokens: int):
        self.pools = pools  # model name -> its block pool (possibly shared with other models)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: dict[str, list[Sequence]] = {m: [] for m in pools}
        # Running sequences of each model as an ordered set (dict keys), oldest arrival first.
        self.running: dict[str, dict[Sequence, None]] = {m: {} for m in pools}
        self._unsorted: set[str] = set()  # models whose running set lost arrival order (a re-admission)
        self.num_preemptions = 0
        self.on_release: Callable[[Sequence], None] | None = None  # called when a sequence leaves running

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting[seq.model], seq, key=lambda s: s.arrival)

    def has_work(self, model: str) -> bool:
        return bool(self.waiting[model] or self.running[model])

    def num_unfinished(self, model: str) -> int:
        return len(self.waiting[model]) + len(self.running[model])

    def schedule(self, model: str) -> ScheduledBatch:
        batch = ScheduledBatch(model)
        preemptions = self.num_preemptions
        budget = self._schedule_running(model, batch)
        if self.num_preemptions == preemptions:  # memory is short: admit nothing new this step
            self._admit_waiting(model, batch, budget)
        return batch

    def _schedule_running(self, model: str, batch: ScheduledBatch) -> int:
        pool = self.pools[model]
        running = self._running_by_arrival(model)
        budget = self.max_num_batched_tokens
        capacity = pool.block_size
        scheduled, counts = batch.seqs, batch.num_new_tokens
        chunks = []
        schedule, count, is_running = scheduled.append, counts.append, SequenceStatus.RUNNING
        # Decodes first (in one pass over the running set) so a long prompt chunk never delays them.
        for seq in list(running):  # a copy: growing a sequence may preempt others
            length = len(seq.token_ids) + seq.num_pending
            if length - seq.num_computed_tokens != 1:
                chunks.append(seq)
                continue
            if length >= seq.max_len:  # its last token is still pending (steps.py): it ends with it
                continue
            if seq.status is not is_running:  # preempted for an earlier sequence this step
                continue
            if length > len(seq.block_table) * capacity and not self._grow(pool, running, seq, length, scheduled):
                continue
            schedule(seq)
            count(1)
            budget -= 1
            if budget == 0:
                return budget
        for seq in chunks:
            if seq.status is not SequenceStatus.RUNNING:
                continue
            computed = seq.num_computed_tokens
            num_tokens = min(len(seq) - computed, budget)
            target = computed + num_tokens
            if target > len(seq.block_table) * capacity and not self._grow(pool, running, seq, target, scheduled):
                continue
            scheduled.append(seq)
            counts.append(num_tokens)
            pool.commit(seq, model, target)
            budget -= num_tokens
            if budget == 0:
                break
        return budget

    def _grow(self, pool: BlockManager, running: dict[Sequence, None], seq: Sequence, target: int,
              scheduled: list[Sequence]) -> bool:
        """Give ``seq`` the blocks for ``target`` tokens, preempting newer sequences while the pool is
        short; False when ``seq`` itself was preempted."""
        while not pool.can_grow(seq, target):
            self.preempt(self._victim(running, seq, set(scheduled)))
            if seq.status is not SequenceStatus.RUNNING:
                return False
        pool.grow(seq, target)
        return True

    @staticmethod
    def _victim(running: dict[Sequence, None], seq: Sequence, scheduled: set[Sequence]) -> Sequence:
        """The newest running sequence not yet scheduled this step (or ``seq`` itself); among
        equal arrivals (a request's samples) the first admitted."""
        victim = None
        for s in reversed(running):
            if s is not seq and s in scheduled:
                continue
            if victim is not None and s.arrival != victim.arrival:
                break
            victim = s
        return victim

    def _running_by_arrival(self, model: str) -> dict[Sequence, None]:
        running = self.running[model]
        if model in self._unsorted:
            ordered = sorted(running, key=lambda s: s.arrival)
            running.clear()
            running.update(dict.fromkeys(ordered))
            self._unsorted.discard(model)
        return running

    def _admit_waiting(self, model: str, batch: ScheduledBatch, budget: int) -> None:
        pool = self.pools[model]
        waiting, running = self.waiting[model], self.running[model]
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            hits = pool.match_prefix(seq, model)
            cached = len(hits) * pool.block_size
            num_tokens = min(len(seq) - cached, budget)
            needed = pool.blocks_for(cached + num_tokens) - len(hits)
            if needed + self._reserved_for_others(model, seq) > pool.free_after_taking(hits):
                break
            waiting.pop(0)
            pool.take_prefix(seq, hits)
            pool.grow(seq, cached + num_tokens)
            pool.commit(seq, model, cached + num_tokens)
            seq.status = SequenceStatus.RUNNING
            if running and seq.arrival < next(reversed(running)).arrival:
                self._unsorted.add(model)
            running[seq] = None
            batch.add(seq, num_tokens)
            budget -= num_tokens

    def _reserved_for_others(self, model: str, seq: Sequence) -> int:
        """Blocks that older waiting sequences of other models on the same pool need first."""
        pool = self.pools[model]
        reserved = 0
        for other, other_pool in self.pools.items():
            if other != model and other_pool is pool and self.waiting[other]:
                oldest = self.waiting[other][0]
                if oldest.arrival < seq.arrival:
                    reserved += pool.blocks_for(min(len(oldest), self.max_num_batched_tokens))
        return reserved

    def waiting_for_memory(self, model: str) -> bool:
        """True when the model has waiting sequences but no room to admit the oldest one."""
        waiting = self.waiting[model]
        if not waiting:
            return False
        pool = self.pools[model]
        return pool.blocks_for(min(len(waiting[0]), self.max_num_batched_tokens)) > pool.num_free_blocks

    def preempt(self, seq: Sequence) -> None:
        self._release(seq)
        self.num_preemptions += 1
        self.add(seq)

    def _release(self, seq: Sequence) -> None:
        del self.running[seq.model][seq]
        self.pools[seq.model].free(seq)
        if self.on_release is not None:
            self.on_release(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and release its blocks."""
        if seq.status == SequenceStatus.RUNNING:
            self._release(seq)
        elif seq in self.waiting[seq.model]:
            self.waiting[seq.model].remove(seq)
        seq.status = SequenceStatus.FINISHED

    def after_step(self, batch: ScheduledBatch) -> None:
        """Advance computed-token counts and register newly full blocks for prefix caching."""
        pool = self.pools[batch.model]
        block_size, running = pool.block_size, SequenceStatus.RUNNING
        for seq, num_tokens in zip(batch.seqs, batch.num_new_tokens):
            if seq.status is not running:  # finished while its step ran (steps.py)
                continue
            computed = seq.num_computed_tokens + num_tokens
            seq.num_computed_tokens = computed
            if computed // block_size > seq.num_hashed_blocks:
                pool.commit(seq, batch.model)
