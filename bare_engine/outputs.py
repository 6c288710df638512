"""What the engine returns for a finished request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None
    error: str | None = None  # with finish_reason "error": what failed (e.g. a logits processor, named)


@dataclass
class RequestOutput:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    prompt: str | None = None  # the prompt text (None when the prompt was token ids), as in vLLM
    # With SamplingParams.prompt_logprobs, vLLM's shape: None for the first prompt token, then for each
    # token a dict of its logprob and the top candidates' (token id -> logprob).
    prompt_logprobs: list[dict[int, float] | None] | None = None
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
