"""Per-request sampling parameters, with the names people know from vLLM."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.kernels.sampling_ref import MAX_LOGPROBS

if TYPE_CHECKING:
    from bare_engine.structured.params import StructuredOutputsParams

# What the sampler's per-row columns hold (sample/sampler.py): top_k int32, seeds int64, floats float32.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_N = 4096  # samples per request: each is a sequence held by the scheduler
MIN_TEMPERATURE = 1e-2  # as vLLM: a smaller positive temperature is raised to this
# Outside these, x / penalty or x * penalty overflows float32 logits.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 1e-3, 1e3


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
    # vLLM's: no EOS or stop token id is generated before this many output tokens.
    min_tokens: int = 0
    # Constrain the output to a JSON schema, regex, choice or grammar (bare_engine/structured/).
    structured_outputs: StructuredOutputsParams | None = None
    # Logprobs of the prompt's tokens and this many top candidates at each position (vLLM's; the
    # output's prompt_logprobs starts with None). Computed at prefill; such a prompt skips the prefix cache.
    prompt_logprobs: int | None = None
    stop_strings: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
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

    def __setattr__(self, name: str, value) -> None:
        # Any assignment after validation marks the object for re-checking at intake (ensure_valid).
        state = self.__dict__
        state[name] = value
        state["_valid"] = False

    def ensure_valid(self) -> None:
        """Validate unless nothing was assigned since the last validation (intake calls this per request)."""
        if not self.__dict__.get("_valid", False):
            self.validate()

    def validate(self) -> None:
        """Check every field against the range its storage holds (top_k int32, seeds int64, floats float32,
        text UTF-8); InvalidSamplingParamsError naming the field otherwise. Token ids are checked against
        the model's vocabulary at intake."""
        self._validate_numbers()
        self._validate_tokens_and_text()
        self._validate_rules()
        self._validate_structured()
        object.__setattr__(self, "_valid", True)

    def _validate_numbers(self) -> None:
        self.n = _integer("n", self.n, 1, MAX_N)
        self.temperature = _real("temperature", self.temperature, 0.0, FLOAT32_MAX)
        if 0.0 < self.temperature < MIN_TEMPERATURE:  # vLLM's clamp: smaller ones overflow the logits
            self.temperature = MIN_TEMPERATURE
        self.top_p = _real("top_p", self.top_p, 0.0, 1.0, low_open=True)
        self.top_k = _integer("top_k", self.top_k, -1, INT32_MAX,
                              "-1 (disabled), 0 (disabled) or a positive integer below 2**31")
        self.min_p = _real("min_p", self.min_p, 0.0, 1.0)
        self.repetition_penalty = _real("repetition_penalty", self.repetition_penalty,
                                        MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY)
        self.presence_penalty = _real("presence_penalty", self.presence_penalty, -2.0, 2.0)
        self.frequency_penalty = _real("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.max_tokens is not None:
            self.max_tokens = _integer("max_tokens", self.max_tokens, 1, INT64_MAX, "a positive integer or None")
        if self.logprobs is not None:
            self.logprobs = _integer("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.seed is not None:
            self.seed = _integer("seed", self.seed, INT64_MIN, INT64_MAX, "an integer that fits int64")

    def _validate_tokens_and_text(self) -> None:
        self.stop_strings = [self.stop] if isinstance(self.stop, str) else _list("stop", self.stop or [])
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                _bad(f"stop strings must be non-empty strings, got {s!r}")
            _text("stop", s)
        self.stop_token_ids = _token_ids("stop_token_ids", self.stop_token_ids or [])
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                _bad(f"logit_bias must map token ids to numbers, got {self.logit_bias!r}")
            self.logit_bias = {_token_id("logit_bias", t): _real("logit_bias", v, -FLOAT32_MAX, FLOAT32_MAX)
                               for t, v in self.logit_bias.items()}
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _token_ids("allowed_token_ids", self.allowed_token_ids)
            if not self.allowed_token_ids:
                _bad("allowed_token_ids must not be empty")
        if self.allowed_token_sequences is not None:
            seqs = [_token_ids("allowed_token_sequences", s) for s in _list("allowed_token_sequences",
                                                                             self.allowed_token_sequences)]
            if not seqs or any(len(s) == 0 for s in seqs):
                _bad("allowed_token_sequences must be a non-empty list of non-empty token lists")
            self.allowed_token_sequences = seqs

    def _validate_rules(self) -> None:
        if self.logits_processors is not None:  # "module:function" names become the functions
            from bare_engine.sample.logits_processors import resolve_processors

            self.logits_processors = resolve_processors(self.logits_processors)
        if self.sampling_steps is not None:
            from bare_engine.sample.sampling_steps import validate_steps

            validate_steps(self.sampling_steps)

    def _validate_structured(self) -> None:
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _integer("prompt_logprobs", self.prompt_logprobs, 0, MAX_LOGPROBS)
        self.min_tokens = _integer("min_tokens", self.min_tokens, 0, INT64_MAX, "a non-negative integer")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _bad(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if self.structured_outputs is not None:
            from bare_engine.structured.params import StructuredOutputsParams

            if isinstance(self.structured_outputs, dict):
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                _bad(f"structured_outputs must be a StructuredOutputsParams, got {self.structured_outputs!r}")
            self.structured_outputs.validate()


def _bad(message: str):
    raise InvalidSamplingParamsError(f"invalid sampling parameter: {message}")


def _integer(name: str, value, low: int, high: int, what: str | None = None) -> int:
    """``value`` as an int in [low, high]; bools and floats are not integers."""
    not_integer = type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral))
    if not_integer or not low <= value <= high:
        _bad(f"{name} must be {what or f'an integer in [{low}, {high}]'}, got {value!r}")
    return int(value)


def _real(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] with ``low_open``); bools are not numbers."""
    if type(value) is not float and type(value) is not int and (
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        _bad(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not (low < number if low_open else low <= number) or number > high:
        _bad(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return number


def _list(name: str, value) -> list:
    if not isinstance(value, (list, tuple)):
        _bad(f"{name} must be a list, got {value!r}")
    return list(value)


def _token_id(name: str, value) -> int:
    return _integer(name, value, 0, INT32_MAX, "token ids (non-negative integers)")


def _token_ids(name: str, value) -> list[int]:
    return [_token_id(name, t) for t in _list(name, value)]


def _text(name: str, value: str) -> None:
    """Text must be encodable as UTF-8 (no lone surrogates such as JSON's "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        _bad(f"{name} is not valid Unicode: {exc.reason} at position {exc.start}")
