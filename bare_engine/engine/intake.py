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
from bare_engine.structured.compiler import GrammarCompiler
from bare_engine.structured.matcher import GrammarState

SEED_MASK = (1 << 63) - 1


class RequestIntake:
    def __init__(self, tokenizers: dict, vocab_sizes: dict[str, int], max_model_len: dict[str, int],
                 eos_ids: dict[str, set[int]], seed: int, step_model: dict[str, str] | None = None):
        self.tokenizers = tokenizers
        self.step_model = step_model or {}  # name -> the model whose steps run its sequences
        self.vocab_sizes = vocab_sizes
        self.max_model_len = max_model_len
        self.eos_ids = eos_ids
        self._token_bytes_cache: dict[tuple[str, bool], TokenBytes | None] = {}
        self._grammar_compilers: dict[str, GrammarCompiler] = {}  # model -> its compiler, made on first use
        self._rng = random.Random(seed)
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()

    def make_request(self, request_id: str, model: str, prompt: str | list[int], params: SamplingParams) -> Request:
        params.ensure_valid()  # validated at construction: again only if assigned to since
        token_ids = self._tokenize(model, prompt)
        self._check_params_tokens(model, params)
        grammar = self._compile_grammar(model, params)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        arrival = next(self._arrivals)
        seqs = []
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), request_id, i, self.step_model.get(model, model), token_ids, params,
                           sample_seed(base_seed, i), arrival)
            seq.served_model = model
            seq.detok = Detokenizer(self.tokenizers[model], params.stop_strings, params.skip_special_tokens,
                                    self._token_bytes(model, params))
            seq.max_len = self._max_len(model, len(token_ids), params)
            if params.allowed_token_sequences is not None:
                seq.trie = TokenTrie(params.allowed_token_sequences, self.eos_ids[model])
            if grammar is not None:
                seq.grammar = GrammarState(grammar)
            if params.min_tokens:
                eos = set() if params.ignore_eos else self.eos_ids[model]
                seq.early_stop_ids = sorted(eos | set(params.stop_token_ids))
            seqs.append(seq)
        return Request(request_id, model, token_ids, seqs)

    def _compile_grammar(self, model: str, params: SamplingParams):
        """The compiled grammar of params.structured_outputs (cached per model and spec), or None."""
        if params.structured_outputs is None:
            return None
        if model not in self._grammar_compilers:
            self._grammar_compilers[model] = GrammarCompiler(self.tokenizers[model], self.vocab_sizes[model],
                                                             self.eos_ids[model])
        return self._grammar_compilers[model].compile(params.structured_outputs)

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
            check_text(prompt, "prompt")
            try:
                token_ids = self.tokenizers[model](prompt).input_ids
            except Exception as exc:  # the tokenizer's own failure is this request's, never the engine's
                raise InvalidRequestError(f"prompt cannot be tokenized: {type(exc).__name__}: {exc}") from None
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
            error = InvalidRequestError(f"{what} token id {bad!r} is outside the vocabulary of {model} (size {vocab})")
            error.param = what  # the request field, for the server's 400
            raise error

    def _check_params_tokens(self, model: str, params: SamplingParams) -> None:
        self._check_token_ids(model, params.stop_token_ids, "stop_token_ids")
        self._check_token_ids(model, params.allowed_token_ids or [], "allowed_token_ids")
        self._check_token_ids(model, list(params.logit_bias or {}), "logit_bias")
        for seq in params.allowed_token_sequences or []:
            self._check_token_ids(model, seq, "allowed_token_sequences")


def check_text(text: str, what: str) -> None:
    """InvalidRequestError unless ``text`` is valid Unicode (no lone surrogates, e.g. JSON's "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{what} is not valid Unicode: {exc.reason} at position {exc.start}") from None


def sample_seed(seed: int, index: int) -> int:
    """Seed of the request's ``index``-th sample: sample 0 uses the request's seed itself."""
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & SEED_MASK
