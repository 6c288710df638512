"""What every rank does for a step, the driver and the workers alike: the forward pass over its shard."""

from __future__ import annotations

import math
import mmap

import torch

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def allocate_kv_cache(
    num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device
) -> KVCache:
    """One rank's K and V blocks per layer: block ``b`` is the same block on every rank, with this rank's heads."""
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if torch.device(device).type == "cpu":
        pool = fresh_zero_pages(2 * num_layers * math.prod(shape), dtype).view(num_layers, 2, *shape)
        return [(pool[i, 0], pool[i, 1]) for i in range(num_layers)]
    return [tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(2)) for _ in range(num_layers)]


def fresh_zero_pages(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """CPU zeros in anonymous pages that the OS maps on first touch. A pool's blocks cost nothing
    until a sequence uses them, and touching them is 3x cheaper than ``torch.zeros`` (2 GiB: 3.6 s)."""
    return torch.frombuffer(mmap.mmap(-1, numel * dtype.itemsize), dtype=dtype)


def run_forward(model, kv_caches: KVCache, backend, graphs, input_ids, positions, meta, logits_indices):
    """Hidden states of the step, then the logits of ``logits_indices`` (full vocabulary on rank 0, None elsewhere).

    Every rank takes the same branches (graphs or eager, logits or not) from the same inputs,
    so their collectives pair up.
    """
    if graphs is not None and graphs.fits(meta, len(input_ids)):
        hidden = graphs.run(input_ids, positions, meta)
    else:
        hidden = model(input_ids, positions, kv_caches, backend, meta)
    if logits_indices.numel() == 0:
        return None
    return model.compute_logits(hidden[logits_indices])
