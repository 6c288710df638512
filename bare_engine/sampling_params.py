"""Per-request sampling parameters, with the names people know from vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.kernels.sampling_ref import MAX_LOGPROBS


@dataclass
class SamplingParams:
    """How one request is sampled.

    temperature 0 means greedy. top_k of -1 (or 0) disables top-k, top_p 1 and
    min_p 0 disable those filters. Penalties follow vLLM: repetition_penalty
    divides positive / multiplies negative logits of tokens seen in the prompt or
    output; presence/frequency penalties subtract from tokens seen in the output.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 16
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    # Constrain the output to exactly one of these token sequences (see constraints.py).
    allowed_token_sequences: list[list[int]] | None = None
    skip_special_tokens: bool = True
    # Per-request rules on the raw logits, vLLM's fn(output_ids, logits) or fn(prompt_ids, output_ids,
    # logits); callables or "module:function" (see logits_processors.py). Run before penalties.
    logits_processors: list | None = None
    # Named sampling steps and their per-request value, run in this order after temperature,
    # e.g. {"top_n_sigma": 1.0} (see sampling_steps.py).
    sampling_steps: dict[str, float] | None = None
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop_strings = [self.stop]
        else:
            self.stop_strings = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidSamplingParamsError(f"invalid sampling parameter: {msg}")

        if not isinstance(self.n, int) or self.n < 1:
            bad(f"n must be an integer >= 1, got {self.n!r}")
        if not self.temperature >= 0.0:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            bad(f"top_k must be -1 (disabled), 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0.0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad(f"max_tokens must be a positive integer or None, got {self.max_tokens!r}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            bad(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.seed is not None and not isinstance(self.seed, int):
            bad(f"seed must be an integer, got {self.seed!r}")
        if any(not s for s in self.stop_strings):
            bad("stop strings must be non-empty")
        if self.allowed_token_ids is not None and len(self.allowed_token_ids) == 0:
            bad("allowed_token_ids must not be empty")
        if self.allowed_token_sequences is not None and (
            not self.allowed_token_sequences or any(len(s) == 0 for s in self.allowed_token_sequences)
        ):
            bad("allowed_token_sequences must be a non-empty list of non-empty token lists")
        if self.logits_processors is not None:  # "module:function" names become the functions
            from bare_engine.sample.logits_processors import resolve_processors

            self.logits_processors = resolve_processors(self.logits_processors)
        if self.sampling_steps is not None:
            from bare_engine.sample.sampling_steps import validate_steps

            validate_steps(self.sampling_steps)
