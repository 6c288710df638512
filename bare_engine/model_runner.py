"""Runs one model: loads its weights, turns a scheduled batch into tensors, runs the forward pass and samples."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bare_engine.attention import AttentionBackend, AttentionMetadata
from bare_engine.config import ModelConfig
from bare_engine.cuda_graphs import DecodeGraphs
from bare_engine.loader import TensorHook, load_weights
from bare_engine.model import CausalLM
from bare_engine.sampler import Sampled, Sampler
from bare_engine.scheduler import ScheduledBatch
from bare_engine.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class ModelStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # rows of the hidden states whose next token is sampled
    sampling_seqs: list[Sequence] = field(default_factory=list)


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
    ):
        self.name = name
        self.config = config
        self.device = device
        self.dtype = dtype
        self.backend = backend
        with torch.device(device):
            model = CausalLM(config, max_positions=max_model_len)
        model.to(dtype=dtype)
        model.rotary.to(torch.float32)  # cos/sin tables stay float32, cast per use
        load_weights(model, weights_dir, weight_hook)
        self.model = model.eval()
        self.sampler = Sampler(config.vocab_size, max_num_seqs, device, sampler_backend)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.block_size = 0
        self.graphs: DecodeGraphs | None = None
        self.stats = ModelStats()

    def bind_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], block_size: int) -> None:
        self.kv_caches = kv_caches
        self.block_size = block_size

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

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> dict[int, Sampled]:
        """One forward pass; returns the sampled token of each sequence that reached its end, by seq_id."""
        start = time.perf_counter()
        inputs = self.prepare(batch)
        if self.graphs is not None and self.graphs.fits(inputs.meta, len(inputs.input_ids)):
            hidden = self.graphs.run(inputs.input_ids, inputs.positions, inputs.meta)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, self.backend, inputs.meta)
        sampled: dict[int, Sampled] = {}
        if inputs.sampling_seqs:
            logits = self.model.compute_logits(hidden[inputs.logits_indices])
            results = self.sampler(logits, inputs.sampling_seqs)
            sampled = {seq.seq_id: r for seq, r in zip(inputs.sampling_seqs, results)}
        self._count(batch, len(sampled), time.perf_counter() - start)
        return sampled

    def _count(self, batch: ScheduledBatch, num_sampled: int, seconds: float) -> None:
        prefill = sum(
            max(0, min(seq.num_prompt_tokens - seq.num_computed_tokens, n))
            for seq, n in zip(batch.seqs, batch.num_new_tokens)
        )
        self.stats.prompt_tokens += prefill
        self.stats.generated_tokens += num_sampled
        self.stats.steps += 1
        self.stats.busy_seconds += seconds

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_seqlens = [0]
        context_lens: list[int] = []
        logits_indices: list[int] = []
        sampling: list[Sequence] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            cu_seqlens.append(cu_seqlens[-1] + n)
            context_lens.append(end)
            if end == len(seq):
                logits_indices.append(cu_seqlens[-1] - 1)
                sampling.append(seq)
        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in batch.seqs]

        def tensor(values, dtype=torch.int64):
            return torch.tensor(values, dtype=dtype, device=self.device)

        meta = AttentionMetadata(
            slot_mapping=tensor(slots),
            block_tables=tensor(tables, torch.int32),
            context_lens=tensor(context_lens, torch.int32),
            cu_seqlens_q=tensor(cu_seqlens, torch.int32),
            max_query_len=max(batch.num_new_tokens),
            max_context_len=max(context_lens),
        )
        return StepInputs(tensor(input_ids), tensor(positions), meta, tensor(logits_indices), sampling)
