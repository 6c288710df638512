"""Decode steps replayed from CUDA graphs, one graph per batch size.

A decode batch is padded up to the next captured size; padding rows write to no
cache slot (slot -1) and attend over an empty context. Needs an attention backend
that never syncs with the host (triton, flash_attn), so the torch backend runs eagerly.
"""

from __future__ import annotations

import torch

from bare_engine.model.layers.attention import AttentionMetadata


class DecodeGraphs:
    def __init__(self, model, kv_caches, backend, batch_sizes: list[int], max_blocks: int, block_size: int, device):
        self.sizes = sorted(batch_sizes)
        max_bs = self.sizes[-1]
        self.max_blocks = max_blocks

        def zeros(*shape, dtype=torch.int64):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.input_ids = zeros(max_bs)
        self.positions = zeros(max_bs)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.int64, device=device)
        self.context_lens = zeros(max_bs, dtype=torch.int32)
        self.block_tables = zeros(max_bs, max_blocks, dtype=torch.int32)
        self.cu_seqlens = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        pool = None
        for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory pool
            meta = AttentionMetadata(
                self.slot_mapping[:bs], self.block_tables[:bs], self.context_lens[:bs],
                self.cu_seqlens[: bs + 1], max_query_len=1, max_context_len=max_blocks * block_size,
            )
            args = (self.input_ids[:bs], self.positions[:bs], kv_caches, backend, meta)
            model(*args)  # warm-up: compiles kernels outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self.outputs[bs] = model(*args)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs] = graph
        torch.cuda.synchronize(device)

    def fits(self, meta: AttentionMetadata, num_tokens: int) -> bool:
        return meta.is_decode and num_tokens <= self.sizes[-1] and meta.block_tables.shape[1] <= self.max_blocks

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = input_ids.shape[0]
        bs = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:bs].fill_(-1)
        self.context_lens[:n].copy_(meta.context_lens)
        self.context_lens[n:bs].zero_()
        self.block_tables[:n, : meta.block_tables.shape[1]].copy_(meta.block_tables)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
