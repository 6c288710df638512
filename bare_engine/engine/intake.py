"""Request intake: a prompt and its SamplingParams become checked sequences, or an InvalidRequestError.

Everything a request can get wrong is found here, before any of it is queued.
"""

from __future__ import annotations

import itertools
import random

from bare_engine.engine.detokenizer import Detokenizer, TokenBytes
from bare_engine.engine.requests import Request
from bare_engine.engine.sequence import Sequence
from bare_engine.errors import InvalidRequestError, PromptTooLongError
from bare_engine.sample.constraints import TokenTrie
from bare_engine.sampling_params import SamplingParams

SEED_MASK = (1 << 63) - 1


class RequestIntake:
    def __init__(self, tokenizers: dict, vocab_sizes: dict[str, int], max_model_len: dict[str, int],
                 eos_ids: dict[str, set[int]], seed: int):
        self.tokenizers = tokenizers
        self.vocab_sizes = vocab_sizes
        self.max_model_len = max_model_len
        self.eos_ids = eos_ids
        self._token_bytes_cache: dict[tuple[str, bool], TokenBytes | None] = {}
        self._rng = random.Random(seed)
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()

    def make_request(self, request_id: str, model: str, prompt: str | list[int], params: SamplingParams) -> Request:
        params.validate()
        token_ids = self._tokenize(model, prompt)
        self._check_params_tokens(model, params)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        arrival = next(self._arrivals)
        seqs = []
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), request_id, i, model, token_ids, params, sample_seed(base_seed, i), arrival)
            seq.detok = Detokenizer(self.tokenizers[model], params.stop_strings, params.skip_special_tokens,
                                    self._token_bytes(model, params))
            seq.max_len = self._max_len(model, len(token_ids), params)
            if params.allowed_token_sequences is not None:
                seq.trie = TokenTrie(params.allowed_token_sequences, self.eos_ids[model])
            seqs.append(seq)
        return Request(request_id, model, token_ids, seqs)

    def _token_bytes(self, model: str, params: SamplingParams) -> TokenBytes | None:
        """The model's token-bytes table for fast stop-string checks (built on the first request with stop strings)."""
        if not params.stop_strings:
            return None
        key = (model, params.skip_special_tokens)
        if key not in self._token_bytes_cache:
            self._token_bytes_cache[key] = TokenBytes.build(self.tokenizers[model], params.skip_special_tokens,
                                                            self.vocab_sizes[model])
        return self._token_bytes_cache[key]

    def _max_len(self, model: str, prompt_len: int, params: SamplingParams) -> int:
        """Length at which a sequence stops: its max_tokens, or the model's context."""
        limit = self.max_model_len[model]
        return limit if params.max_tokens is None else min(limit, prompt_len + params.max_tokens)

    def _tokenize(self, model: str, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            token_ids = self.tokenizers[model](prompt).input_ids
        else:
            token_ids = list(prompt)
        if not token_ids:
            raise InvalidRequestError("empty prompt")
        self._check_token_ids(model, token_ids, "prompt")
        limit = self.max_model_len[model]
        if len(token_ids) >= limit:
            raise PromptTooLongError(
                f"prompt of {len(token_ids)} tokens does not fit {model}'s context of {limit} tokens "
                "(at least one token must be generated)"
            )
        return token_ids

    def _check_token_ids(self, model: str, token_ids, what: str) -> None:
        vocab = self.vocab_sizes[model]
        if not token_ids or (set(map(type, token_ids)) <= {int} and min(token_ids) >= 0 and max(token_ids) < vocab):
            return  # the common case, checked at C speed
        bad = next((t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"{what} token id {bad!r} is outside the vocabulary of {model} (size {vocab})")

    def _check_params_tokens(self, model: str, params: SamplingParams) -> None:
        self._check_token_ids(model, params.allowed_token_ids or [], "allowed_token_ids")
        self._check_token_ids(model, list(params.logit_bias or {}), "logit_bias")
        for seq in params.allowed_token_sequences or []:
            self._check_token_ids(model, seq, "allowed_token_sequences")


def sample_seed(seed: int, index: int) -> int:
    """Seed of the request's ``index``-th sample: sample 0 uses the request's seed itself."""
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & SEED_MASK
