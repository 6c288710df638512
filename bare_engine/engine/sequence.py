"""A sequence: one sample of a request, from waiting through running to finished."""

from __future__ import annotations

from enum import Enum, auto

from bare_engine.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    # Slots: the engine reads these attributes for every running sequence at every step.
    __slots__ = ("seq_id", "request_id", "index", "model", "token_ids", "num_prompt_tokens", "params", "seed",
                 "arrival", "status", "block_table", "num_computed_tokens", "row", "sample_index", "num_pending",
                 "num_hashed_blocks", "last_block_hash", "max_len", "finish_reason", "stop_reason", "error",
                 "logprobs", "cumulative_logprob", "detok", "trie", "grammar", "early_stop_ids", "prompt_logprobs",
                 "num_cached_tokens", "served_model")

    def __init__(
        self,
        seq_id: int,
        request_id: str,
        index: int,
        model: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seed: int,
        arrival: int,
    ):
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index  # which of the request's n samples
        self.model = model  # the model whose steps run it (its runner, pool and scheduler queues)
        self.served_model = model  # the name the request asked for (differs when names share a runner)
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.seed = seed
        self.arrival = arrival  # admission order: lower runs first, kept across preemption
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.row: int | None = None  # row in the model's InputBatch (and sampler state) while running
        self.sample_index = 0  # index of its token among the sampled tokens of its last step
        # Tokens sampled on the device but not yet read back (overlapped steps, steps.py): they count in
        # the sequence's length but are not in token_ids, as vLLM's num_output_placeholders.
        self.num_pending = 0
        self.num_hashed_blocks = 0  # leading full blocks whose prefix-cache hash is known
        self.last_block_hash: int | None = None  # chained hash of the last of them
        self.max_len = 1 << 62  # total length at which it stops (max_tokens / context), set by the engine
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.error: str | None = None  # why it failed (a logits processor raised): finish_reason "error"
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.detok = None  # incremental detokenizer state, set by the engine
        self.trie = None  # TokenTrie when params.allowed_token_sequences is set
        self.grammar = None  # GrammarState (structured/matcher.py) when params.structured_outputs is set
        self.early_stop_ids = None  # with min_tokens: EOS and stop token ids, banned before min_tokens
        # params.prompt_logprobs: one entry per prompt token computed so far (None for the first one)
        self.prompt_logprobs: list[dict[int, float] | None] | None = None if params.prompt_logprobs is None else [None]
        self.num_cached_tokens: int | None = None  # prompt tokens served by the prefix cache, first admission

    def __len__(self) -> int:
        """Its length as the scheduler sees it: the known tokens and those still pending on the device."""
        return len(self.token_ids) + self.num_pending

    @property
    def output_token_ids(self) -> list[int]:
        """The tokens generated so far (read back from the device)."""
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self) - self.num_computed_tokens

    def prompt_tokens_in_step(self, n: int) -> int:
        """How many of the ``n`` tokens this step computes (from ``num_computed_tokens`` on) are prompt tokens."""
        return max(0, min(self.num_prompt_tokens - self.num_computed_tokens, n))

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED
