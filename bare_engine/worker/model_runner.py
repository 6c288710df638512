"""Runs one model: loads its weights, turns a scheduled batch into tensors, runs the forward pass and samples.

The batch's inputs come from the model's InputBatch (persistent per-row state, one flat
host buffer per step, see input_batch.py) and reach the device in one copy. ``launch``
queues a step on the device and returns at once; its ``LaunchedStep.result()`` waits for
the sampled tokens (``run`` does both, the synchronous step)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bare_engine.model.layers.attention import AttentionBackend
from bare_engine.model.config import ModelConfig
from bare_engine.worker.cuda_graphs import DecodeGraphs
from bare_engine.worker.forward import run_forward
from bare_engine.model.layers.linear import SINGLE_RANK
from bare_engine.model.loader import TensorHook, load_model
from bare_engine.worker.input_batch import InputBatch
from bare_engine.worker.prompt_logprobs import add_prompt_logprobs, prompt_positions
from bare_engine.sample.sampler import DeviceSample, Sampler
from bare_engine.engine.scheduler import ScheduledBatch
from bare_engine.engine.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class ModelStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0  # sampled (with async scheduling, also the discarded token of a step run past a stop)
    steps: int = 0
    busy_seconds: float = 0.0


@dataclass
class StepResult:
    seqs: list[Sequence]  # sequences that got a token this step, in batch order
    token_ids: list[int]
    logprobs: list[dict[int, float] | None] | None = None


@dataclass
class LaunchedStep:
    """A step queued on the device: its sampled sequences and their tokens."""

    seqs: list[Sequence]
    sample: DeviceSample | None  # None when the step sampled nothing (prompt chunks only)
    stats: list[ModelStats]  # the runner's, and those of the names it served in this step

    @property
    def device_tokens(self):
        return None if self.sample is None else self.sample.token_ids

    def result(self) -> StepResult:
        """Wait for the sampled tokens and return them."""
        if self.sample is None:
            return StepResult([], [])
        start = time.perf_counter()
        out = self.sample.to_host()
        waited = time.perf_counter() - start
        for stats in self.stats:
            stats.busy_seconds += waited
        return StepResult(self.seqs, out.token_ids, out.logprobs)


class ModelRunner:
    def __init__(
        self,
        name: str,
        config: ModelConfig,
        weights_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        max_model_len: int,
        max_num_seqs: int,
        backend: AttentionBackend,
        weight_hook: TensorHook | None = None,
        sampler_backend: str = "auto",
        group=SINGLE_RANK,
        tensor_parallel=None,
        model_index: int = 0,
    ):
        """``group``: the tensor-parallel rank this runner's shard is (rank 0, the driver); ``tensor_parallel``:
        the TPExecutor whose workers run the other shards of each step (model ``model_index`` there)."""
        self.name = name
        self.config = config
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.model = load_model(config, weights_dir, device, dtype, max_model_len, weight_hook, group)
        self.tensor_parallel = tensor_parallel
        self.model_index = model_index
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.sampler = Sampler(config.vocab_size, max_num_seqs, device, sampler_backend)
        self.input_batch: InputBatch | None = None  # created with the cache, when the block size is known
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.block_size = 0
        self.graphs: DecodeGraphs | None = None
        self.stats = ModelStats()
        self.served_stats: dict[str, ModelStats] = {}  # each name this runner serves, when several share it

    def bind_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], block_size: int) -> None:
        self.kv_caches = kv_caches
        self.block_size = block_size
        max_blocks = -(-self.max_model_len // block_size)
        self.input_batch = InputBatch(self.max_num_seqs, max_blocks, block_size, pin=self.device.type == "cuda")
        self.input_batch.on_assign = self.sampler.add_row

    def capture_graphs(self, batch_sizes: list[int], max_model_len: int) -> None:
        """Capture decode CUDA graphs; on failure log why and stay eager (never worse than no graphs)."""
        if self.device.type != "cuda" or self.backend.name == "torch" or not batch_sizes:
            return
        max_blocks = -(-max_model_len // self.block_size)
        try:
            with torch.inference_mode():
                self.graphs = DecodeGraphs(
                    self.model, self.kv_caches, self.backend, batch_sizes, max_blocks, self.block_size, self.device
                )
        except RuntimeError as exc:
            logger.warning("CUDA graph capture failed for %s, running eagerly: %s", self.name, exc)
            self.graphs = None

    def serve_as(self, name: str) -> None:
        """Also run the sequences of ``name`` (the same checkpoint), counting its stats apart."""
        self.served_stats.setdefault(self.name, ModelStats())
        self.served_stats[name] = ModelStats()

    def stats_for(self, name: str) -> ModelStats:
        """Tokens and steps of ``name``'s sequences; a step that ran several names counts its time for each."""
        return self.served_stats.get(name, self.stats)

    def _count_served(self, batch: ScheduledBatch, sampled: list[Sequence], seconds: float) -> list[ModelStats]:
        stepped = set()
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            stats = self.served_stats[seq.served_model]
            stats.prompt_tokens += seq.prompt_tokens_in_step(n)
            stepped.add(seq.served_model)
        for seq in sampled:
            self.served_stats[seq.served_model].generated_tokens += 1
        for name in stepped:
            self.served_stats[name].steps += 1
            self.served_stats[name].busy_seconds += seconds
        return [self.served_stats[name] for name in stepped]

    def release(self, seq: Sequence) -> None:
        """The sequence left the running set: free its row."""
        self.input_batch.release(seq)

    def run(self, batch: ScheduledBatch) -> StepResult:
        """One forward pass; returns the sampled token of each sequence that reached its end."""
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous_tokens: torch.Tensor | None = None) -> LaunchedStep:
        """Queue one forward pass and its sampling. ``previous_tokens``: the last launched step's sampled
        tokens on the device, read by decode rows whose input token is still pending (engine/steps.py)."""
        start = time.perf_counter()
        step = self.input_batch.prepare(batch)
        if self.tensor_parallel is not None:
            self.tensor_parallel.send_step(self.model_index, step.inputs)
        inputs = self.input_batch.to_device(step.inputs, self.device)
        inputs.gather_pending(previous_tokens)
        wanted = prompt_positions(batch)
        if wanted and self.tensor_parallel is None:
            logits = self._forward_with_prompt_logprobs(inputs, wanted)
        else:
            for seq, _, _ in wanted:  # a second logits pass would unpair the ranks' collectives
                seq.error = "prompt_logprobs is not supported with tensor parallelism"
            logits = run_forward(self.model, self.kv_caches, self.backend, self.graphs,
                                 inputs.input_ids, inputs.positions, inputs.meta, inputs.logits_indices)
        sample = None
        if step.sampled_seqs:
            sample = self.sampler.sample(logits, step.sampled_seqs, step.sampled_rows, step.sampled_lens)
        self.stats.prompt_tokens += step.num_prompt_tokens
        self.stats.generated_tokens += len(step.sampled_seqs)
        self.stats.steps += 1
        seconds = time.perf_counter() - start
        self.stats.busy_seconds += seconds
        served = self._count_served(batch, step.sampled_seqs, seconds) if self.served_stats else []
        return LaunchedStep(step.sampled_seqs, sample, [self.stats, *served])

    def _forward_with_prompt_logprobs(self, inputs, wanted) -> torch.Tensor | None:
        """run_forward's eager path, keeping the hidden states for the prompt positions that owe logprobs."""
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, self.backend, inputs.meta)
        add_prompt_logprobs(hidden, self.model.compute_logits, wanted)
        if inputs.logits_indices.numel() == 0:
            return None
        return self.model.compute_logits(hidden[inputs.logits_indices])
