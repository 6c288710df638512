"""The engine internals the server reads, in one place.

LLMEngine's public API returns only finished requests, so streaming and metrics read a
few attributes directly. What a public API for this would look like: ``step()`` also
returning the new output tokens of every unfinished request (vLLM's delta outputs), and
``engine.stats()`` giving per-model running/waiting counts, KV blocks used/total and
preemptions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SampleProgress:
    new_token_ids: list[int]  # output tokens after the first ``start`` ones
    num_output_tokens: int
    finished: bool


def request_progress(engine, request_id: str, starts: list[int]) -> list[SampleProgress] | None:
    """Per sample of an unfinished request, its output tokens from ``starts[i]`` on; None once finished."""
    request = engine.requests.get(request_id)
    if request is None:
        return None
    progress = []
    for seq, start in zip(request.seqs, starts):
        produced = seq.num_output_tokens
        first = seq.num_prompt_tokens
        new = seq.token_ids[first + start:first + produced] if produced > start else []  # no pending tokens
        progress.append(SampleProgress(new, produced, seq.is_finished))
    return progress


def max_model_len(engine, model: str) -> int:
    return engine.max_model_len[model]


def weights_dir(engine, model: str):
    return engine.sources[model].weights_dir


def sequence_counts(engine) -> dict[str, tuple[int, int]]:
    """model -> (running, waiting) sequences."""
    scheduler = engine.scheduler
    return {m: (len(scheduler.running[m]), len(scheduler.waiting[m])) for m in scheduler.pools}


def num_waiting_sequences(engine) -> int:
    return sum(len(w) for w in engine.scheduler.waiting.values())


def kv_blocks(engine) -> tuple[int, int]:
    """(used, total) blocks over the engine's distinct KV pools (models may share one)."""
    pools = {id(p): p for p in engine.scheduler.pools.values()}.values()
    total = sum(p.num_blocks for p in pools)
    return total - sum(p.num_free_blocks for p in pools), total


def num_preemptions(engine) -> int:
    return engine.scheduler.num_preemptions
