"""The step-wise engine: named models, one scheduler, shared KV pools.

Models whose KV cache has the same shape and dtype share one block pool, so a block
freed by one can serve the other; otherwise the KV budget is split between pools by
``kv_split_ratio``. Each ``step()`` runs one forward pass of one model; with
``async_scheduling`` (on by default on CUDA) it queues that pass and then processes the
previous one while the device runs it (overlap.py).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from bare_engine.attention import select_backend
from bare_engine.block_manager import BlockManager
from bare_engine.constraints import TokenTrie
from bare_engine.config import EngineConfig, ModelConfig, load_model_config
from bare_engine.distributed.forward import allocate_kv_cache
from bare_engine.distributed.group import SINGLE_RANK
from bare_engine.distributed.layers import heads_per_rank
from bare_engine.distributed.executor import LOAD_TIMEOUT_S, TPExecutor
from bare_engine.distributed.worker import KVPool, ModelLoad
from bare_engine.errors import ConfigError, InvalidRequestError, KVCacheTooSmallError, PromptTooLongError
from bare_engine.lora import ModelSource, ModelSpec, resolve_model_source
from bare_engine.model_policy import InterleavePolicy
from bare_engine.model_runner import ModelRunner, ModelStats
from bare_engine.outputs import CompletionOutput, RequestOutput
from bare_engine.overlap import OverlappedSteps, needs_host_history
from bare_engine.sampling_params import SamplingParams
from bare_engine.scheduler import ScheduledBatch, Scheduler
from bare_engine.sequence import Sequence
from bare_engine.tokenizer import Detokenizer, TokenBytes, load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
CPU_KV_BYTES = 2 << 30  # default KV budget on CPU when num_kv_blocks is not given
GPU_ACTIVATION_RESERVE = 1 << 30
SEED_MASK = (1 << 63) - 1


@dataclass
class _Request:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    seqs: list[Sequence]


class LLMEngine:
    def __init__(
        self,
        models: str | Path | ModelSpec | dict[str, str | Path | ModelSpec],
        config: EngineConfig | None = None,
        policy=None,
    ):
        self.config = config or EngineConfig()
        if not isinstance(models, dict):
            models = {DEFAULT_MODEL: models}
        if not models:
            raise ConfigError("no model given")
        devices = self.config.rank_devices()
        self.device = devices[0]
        self.dtype = self.config.resolve_dtype(self.device)
        sources = {name: resolve_model_source(spec) for name, spec in models.items()}
        self.sources: dict[str, ModelSource] = sources  # model name -> its weights and tokenizer directories
        model_configs = {name: load_model_config(s.weights_dir) for name, s in sources.items()}
        self.max_model_len = {name: self._max_model_len(c) for name, c in model_configs.items()}
        self.tokenizers = {name: load_tokenizer(s.tokenizer_dir) for name, s in sources.items()}
        self.backend = select_backend(self.config.attention_backend, self.device)
        self.tp = self._start_tensor_parallel(devices, models, model_configs)
        try:
            self.runners = {name: self._load_runner(name, model_configs[name], s, i) for i, (name, s) in enumerate(sources.items())}
            self.eos_ids = {name: self._eos_ids(c, self.tokenizers[name]) for name, c in model_configs.items()}
            self._workers_free_memory = self.tp.collect("load", LOAD_TIMEOUT_S) if self.tp else []
            pools = self._allocate_pools(model_configs)
        except BaseException:
            self.shutdown()
            raise
        self.scheduler = Scheduler(pools, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        self.scheduler.on_release = lambda seq: self.runners[seq.model].release(seq)
        drain = "instruct" if "instruct" in models else None
        self.policy = policy or InterleavePolicy(drain_model=drain)
        self.requests: dict[str, _Request] = {}
        # Unfinished requests whose sampling reads their tokens on the host -> model; their
        # models' steps run synchronously (overlap.py).
        self._host_history: dict[str, str] = {}
        self.host_history_models: Counter[str] = Counter()
        self.overlap: OverlappedSteps | None = None
        self._set_overlap(self.config.resolve_async_scheduling(self.device))
        self._token_bytes_cache: dict[tuple[str, bool], TokenBytes | None] = {}
        self._rng = random.Random(self.config.seed)
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()

    # ----- set-up -----------------------------------------------------------------------

    def _start_tensor_parallel(self, devices, models: dict, model_configs: dict[str, ModelConfig]):
        """tensor_parallel_size > 1: spawn the workers (ranks 1..N-1) and have them load their shards."""
        tp = self.config.tensor_parallel_size
        if tp == 1:
            return None
        for c in model_configs.values():
            c.check_tensor_parallel(tp)
        executor = TPExecutor(devices, self.backend.name)
        try:
            executor.load([ModelLoad(name, spec, self.max_model_len[name], self.dtype) for name, spec in models.items()])
        except BaseException:
            executor.shutdown()
            raise
        return executor

    def _load_runner(self, name: str, config: ModelConfig, source: ModelSource, index: int) -> ModelRunner:
        hook = source.adapter.merge if source.adapter else None
        runner = ModelRunner(
            name, config, source.weights_dir, self.device, self.dtype, self.max_model_len[name],
            self.config.max_num_seqs, self.backend, weight_hook=hook, sampler_backend=self.config.sampler_backend,
            group=self.tp.group if self.tp else SINGLE_RANK, tensor_parallel=self.tp, model_index=index,
        )
        if source.adapter:
            source.adapter.check_all_used()
        return runner

    def _max_model_len(self, model: ModelConfig) -> int:
        limit = model.max_position_embeddings
        wanted = self.config.max_model_len or limit
        if wanted > limit:
            raise ConfigError(f"max_model_len {wanted} exceeds {model.path.name}'s context of {limit} tokens")
        return wanted

    @staticmethod
    def _eos_ids(model: ModelConfig, tokenizer) -> set[int]:
        ids = set(model.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        return ids

    def _allocate_pools(self, model_configs: dict[str, ModelConfig]) -> dict[str, BlockManager]:
        groups: dict[tuple, list[str]] = {}
        for name, c in model_configs.items():
            groups.setdefault(c.kv_shape, []).append(name)
        bs = self.config.block_size
        tp = self.config.tensor_parallel_size
        # Each rank holds its share of the KV heads of every block.
        block_bytes = {s: 2 * s[0] * bs * heads_per_rank(s[1], tp) * s[2] * self.dtype.itemsize for s in groups}
        num_blocks = self._pool_sizes(groups, block_bytes)
        limit = self.config.max_num_seqs
        graph_sizes = None if self.config.enforce_eager else sorted(
            {b for b in self.config.cuda_graph_batch_sizes if b < limit} | {limit})
        if self.tp:  # the workers allocate (and capture) in the same order, alongside
            self.tp.allocate_kv([KVPool(names, blocks, bs) for names, blocks in zip(groups.values(), num_blocks)], graph_sizes)
        pools: dict[str, BlockManager] = {}
        for (shape, names), blocks in zip(groups.items(), num_blocks):
            need = max(-(-self.max_model_len[n] // bs) for n in names)
            if blocks < need:
                raise KVCacheTooSmallError(
                    f"KV cache of {blocks} blocks x {bs} tokens cannot hold one sequence of "
                    f"max_model_len {need * bs} tokens for {', '.join(names)}; raise num_kv_blocks to at least "
                    f"{need} (or lower max_model_len)"
                )
            layers, kv_heads, head_dim = shape
            caches = allocate_kv_cache(layers, blocks, bs, heads_per_rank(kv_heads, tp), head_dim, self.dtype, self.device)
            manager = BlockManager(blocks, bs, self.config.enable_prefix_caching)
            for name in names:
                self.runners[name].bind_cache(caches, bs)
                pools[name] = manager
                if graph_sizes:
                    self.runners[name].capture_graphs(graph_sizes, self.max_model_len[name])
            logger.info("KV pool for %s: %d blocks of %d tokens", ", ".join(names), blocks, bs)
        if self.tp:
            self.tp.collect("kv")
        return pools

    def _pool_sizes(self, groups: dict[tuple, list[str]], block_bytes: dict[tuple, int]) -> list[int]:
        shares = [1.0] if len(groups) == 1 else (
            [self.config.kv_split_ratio] + [(1 - self.config.kv_split_ratio) / (len(groups) - 1)] * (len(groups) - 1)
        )
        if self.config.num_kv_blocks is not None:
            return [max(1, int(self.config.num_kv_blocks * s)) for s in shares]
        budget = self._kv_budget_bytes(groups)
        return [int(budget * s // block_bytes[shape]) for s, shape in zip(shares, groups)]

    def _kv_budget_bytes(self, groups: dict[tuple, list[str]]) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            free = min([free, *self._workers_free_memory])  # every rank allocates the same blocks
            return max(0, int(free - total * (1 - self.config.gpu_memory_utilization) - GPU_ACTIVATION_RESERVE))
        # CPU: enough for max_num_seqs full-length sequences of every model, capped.
        bs = self.config.block_size
        need = 0
        for shape, names in groups.items():
            per_token = 2 * shape[0] * shape[1] * shape[2] * self.dtype.itemsize
            tokens = sum(self.config.max_num_seqs * (-(-self.max_model_len[n] // bs) * bs) for n in names)
            need += per_token * tokens
        return min(need, CPU_KV_BYTES)

    # ----- lifecycle --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do at tensor_parallel_size 1); idempotent."""
        if getattr(self, "tp", None) is not None:
            self.tp.shutdown()

    def __enter__(self) -> "LLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def set_async_scheduling(self, enabled: bool) -> None:
        """Switch overlapped steps on or off between runs (benchmarks compare both on one engine)."""
        if self.has_unfinished_requests():
            raise InvalidRequestError("async_scheduling can only change while no request is unfinished")
        if self.overlap is not None:
            self.overlap.drain()  # aborted requests' last step: nothing is left to report
        self._set_overlap(enabled)

    def _set_overlap(self, enabled: bool) -> None:
        if enabled and self.tp is not None:
            logger.info("async_scheduling: tensor_parallel_size > 1 runs synchronous steps")
            enabled = False
        self.overlap = OverlappedSteps(self) if enabled else None

    @property
    def async_scheduling(self) -> bool:
        return self.overlap is not None

    @property
    def tensor_parallel_pids(self) -> list[int]:
        """Process ids of the tensor-parallel workers (ranks 1..N-1)."""
        return self.tp.pids if self.tp else []

    # ----- requests ---------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return list(self.runners)

    @property
    def stats(self) -> dict[str, ModelStats]:
        return {name: r.stats for name, r in self.runners.items()}

    def tokenizer(self, model: str | None = None):
        return self.tokenizers[self._model_name(model)]

    def _model_name(self, model: str | None) -> str:
        if model is None:
            if len(self.runners) != 1:
                raise InvalidRequestError(f"several models are loaded ({', '.join(self.runners)}): name one")
            return next(iter(self.runners))
        if model not in self.runners:
            raise InvalidRequestError(f"unknown model {model!r}; loaded: {', '.join(self.runners)}")
        return model

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        model: str | None = None,
    ) -> None:
        model = self._model_name(model)
        params = params or SamplingParams()
        params.validate()
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        token_ids = self._tokenize(model, prompt)
        self._check_params_tokens(model, params)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        arrival = next(self._arrivals)
        seqs = []
        for i in range(params.n):
            seq = Sequence(next(self._seq_ids), request_id, i, model, token_ids, params, _sample_seed(base_seed, i), arrival)
            seq.detok = Detokenizer(self.tokenizers[model], params.stop_strings, params.skip_special_tokens,
                                    self._token_bytes(model, params))
            seq.max_len = self._max_len(model, len(token_ids), params)
            if params.allowed_token_sequences is not None:
                seq.trie = TokenTrie(params.allowed_token_sequences, self.eos_ids[model])
            seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = _Request(request_id, model, token_ids, seqs)
        if needs_host_history(params):
            self._host_history[request_id] = model
            self.host_history_models[model] += 1

    def _token_bytes(self, model: str, params: SamplingParams) -> TokenBytes | None:
        """The model's token-bytes table for fast stop-string checks (built on the first request with stop strings)."""
        if not params.stop_strings:
            return None
        key = (model, params.skip_special_tokens)
        if key not in self._token_bytes_cache:
            vocab = self.runners[model].config.vocab_size
            self._token_bytes_cache[key] = TokenBytes.build(self.tokenizers[model], params.skip_special_tokens, vocab)
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
        vocab = self.runners[model].config.vocab_size
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

    def abort_request(self, request_id: str) -> None:
        request = self._pop_request(request_id)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)

    def _pop_request(self, request_id: str) -> _Request | None:
        model = self._host_history.pop(request_id, None)
        if model is not None:
            self.host_history_models[model] -= 1
            if not self.host_history_models[model]:
                del self.host_history_models[model]
        return self.requests.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_unfinished_requests(self, model: str | None = None) -> int:
        return sum(1 for r in self.requests.values() if model is None or r.model == model)

    # ----- the loop ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one forward pass of one model; return the requests that finished in it (with overlapped
        steps: in the previous one, processed while this one runs)."""
        if self.overlap is not None:
            return self.overlap.step()
        return self._step_synchronously()

    def schedule_batch(self) -> ScheduledBatch | None:
        """The next step's batch, of the first model in the policy's order that has one."""
        for model in self.policy.order(self.scheduler):
            batch = self.scheduler.schedule(model)
            if batch:
                self.policy.stepped(model)
                return batch
        return None

    def _step_synchronously(self) -> list[RequestOutput]:
        batch = self.schedule_batch()
        if batch is None:
            if self.requests:
                raise RuntimeError("scheduler made no progress with requests pending (engine bug)")
            return []
        return self.run_batch(batch)

    def run_batch(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Run a scheduled batch, waiting for its tokens, and process them: a synchronous step."""
        result = self.runners[batch.model].run(batch)
        self.scheduler.after_step(batch)
        finished_requests = []
        eos_ids, accept = self.eos_ids[batch.model], self.accept_token
        logprobs = result.logprobs if result.logprobs is not None else itertools.repeat(None)
        for seq, token, token_logprobs in zip(result.seqs, result.token_ids, logprobs):
            if seq.error is not None:  # its logits processor failed: the token is not its own (logits_processors.py)
                seq.finish_reason = "error"
            else:
                tokens = seq.token_ids
                tokens.append(token)
                if not accept(seq, token, token_logprobs, eos_ids, len(tokens)):
                    continue
            output = self.finish_sequence(seq)
            if output is not None:
                finished_requests.append(output)
        return finished_requests

    def finish_sequence(self, seq: Sequence) -> RequestOutput | None:
        """Release a finished sequence; its request's output once all its samples are finished."""
        self.scheduler.finish(seq)
        request = self.requests[seq.request_id]
        if all(s.is_finished for s in request.seqs):
            return self._output(self._pop_request(seq.request_id))
        return None

    def accept_token(self, seq: Sequence, token: int, logprobs: dict[int, float] | None, eos_ids: set[int],
                     length: int) -> bool:
        """Record the token just placed at ``length - 1`` in token_ids; return True when it ends the sequence."""
        if logprobs is not None and seq.logprobs is not None:
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[token]
        params = seq.params
        if not params.ignore_eos and token in eos_ids:
            seq.finish_reason = "stop"
        elif seq.trie is not None and seq.trie.is_complete(seq.output_token_ids):
            seq.detok.add(token)
            seq.finish_reason = "stop"
        elif token in params.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        elif (stop := seq.detok.add(token)) is not None:
            seq.finish_reason, seq.stop_reason = "stop", stop
        elif length >= seq.max_len:  # max_tokens or the model's context
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    def _output(self, request: _Request) -> RequestOutput:
        outputs = []
        for seq in request.seqs:
            # EOS and stop tokens never reach the detokenizer, so they are not part of the text.
            stop = seq.stop_reason if isinstance(seq.stop_reason, str) else None
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    token_ids=seq.output_token_ids,
                    text=seq.detok.final_text(stop, seq.params.include_stop_str_in_output),
                    finish_reason=seq.finish_reason or "abort",
                    stop_reason=seq.stop_reason,
                    logprobs=seq.logprobs,
                    cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
                    error=seq.error,
                )
            )
        return RequestOutput(request.request_id, request.model, request.prompt_token_ids, outputs)


def _sample_seed(seed: int, index: int) -> int:
    """Seed of the request's ``index``-th sample: sample 0 uses the request's seed itself."""
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & SEED_MASK
