"""KV sizing: how many blocks each pool gets, their allocation, and the decode CUDA graphs over them.

Models whose KV cache has the same shape share one block pool, so a block freed by one can
serve the other; otherwise the budget is split between pools by ``kv_split_ratio``.
"""

from __future__ import annotations

import logging

import torch

from bare_engine.config import EngineConfig
from bare_engine.engine.block_manager import BlockManager
from bare_engine.engine.loading import LoadedModels
from bare_engine.errors import KVCacheTooSmallError
from bare_engine.model.layers.linear import heads_per_rank
from bare_engine.worker.forward import allocate_kv_cache

logger = logging.getLogger(__name__)

CPU_KV_BYTES = 2 << 30  # default KV budget on CPU when num_kv_blocks is not given
GPU_ACTIVATION_RESERVE = 1 << 30


def allocate_pools(config: EngineConfig, loaded: LoadedModels) -> dict[str, BlockManager]:
    """step model name -> its block pool; binds each runner to its cache (and captures its graphs)."""
    groups: dict[tuple, list[str]] = {}
    for name, c in loaded.configs.items():
        if loaded.step_model[name] == name:  # a name sharing another's runner shares its pool and queues too
            groups.setdefault(c.kv_shape, []).append(name)
    bs, tp = config.block_size, config.tensor_parallel_size
    # Each rank holds its share of the KV heads of every block.
    block_bytes = {s: 2 * s[0] * bs * heads_per_rank(s[1], tp) * s[2] * loaded.dtype.itemsize for s in groups}
    num_blocks = pool_sizes(config, loaded, groups, block_bytes)
    limit = config.max_num_seqs
    graph_sizes = None if config.enforce_eager else sorted({b for b in config.cuda_graph_batch_sizes if b < limit} | {limit})
    if loaded.tp:  # the workers allocate (and capture) in the same order, alongside
        from bare_engine.distributed.worker import KVPool

        loaded.tp.allocate_kv([KVPool(names, blocks, bs) for names, blocks in zip(groups.values(), num_blocks)], graph_sizes)
    pools: dict[str, BlockManager] = {}
    for (shape, names), blocks in zip(groups.items(), num_blocks):
        _check_fits(loaded, names, blocks, bs)
        layers, kv_heads, head_dim = shape
        caches = allocate_kv_cache(layers, blocks, bs, heads_per_rank(kv_heads, tp), head_dim, loaded.dtype, loaded.device)
        manager = BlockManager(blocks, bs, config.enable_prefix_caching)
        for name in names:
            runner = loaded.runners[name]
            runner.bind_cache(caches, bs)
            pools[name] = manager
            if graph_sizes:
                runner.capture_graphs(graph_sizes, loaded.max_model_len[name])
        logger.info("KV pool for %s: %d blocks of %d tokens", ", ".join(names), blocks, bs)
    if loaded.tp:
        loaded.tp.collect("kv")
    return pools


def _check_fits(loaded: LoadedModels, names: list[str], blocks: int, bs: int) -> None:
    need = max(-(-loaded.max_model_len[n] // bs) for n in names)
    if blocks < need:
        raise KVCacheTooSmallError(
            f"KV cache of {blocks} blocks x {bs} tokens cannot hold one sequence of "
            f"max_model_len {need * bs} tokens for {', '.join(names)}; raise num_kv_blocks to at least "
            f"{need} (or lower max_model_len)"
        )


def pool_sizes(config: EngineConfig, loaded: LoadedModels, groups: dict[tuple, list[str]],
               block_bytes: dict[tuple, int]) -> list[int]:
    """Blocks of each pool: ``num_kv_blocks`` split by ``kv_split_ratio``, or what the memory budget holds."""
    ratio = config.kv_split_ratio
    shares = [1.0] if len(groups) == 1 else [ratio] + [(1 - ratio) / (len(groups) - 1)] * (len(groups) - 1)
    if config.num_kv_blocks is not None:
        return [max(1, int(config.num_kv_blocks * s)) for s in shares]
    budget = kv_budget_bytes(config, loaded, groups)
    return [int(budget * s // block_bytes[shape]) for s, shape in zip(shares, groups)]


def kv_budget_bytes(config: EngineConfig, loaded: LoadedModels, groups: dict[tuple, list[str]]) -> int:
    if loaded.device.type == "cuda":
        free, total = torch.cuda.mem_get_info(loaded.device)
        free = min([free, *loaded.workers_free_memory])  # every rank allocates the same blocks
        return max(0, int(free - total * (1 - config.gpu_memory_utilization) - GPU_ACTIVATION_RESERVE))
    # CPU: enough for max_num_seqs full-length sequences of every model, capped.
    bs = config.block_size
    need = 0
    for shape, names in groups.items():
        per_token = 2 * shape[0] * shape[1] * shape[2] * loaded.dtype.itemsize
        tokens = sum(config.max_num_seqs * (-(-loaded.max_model_len[n] // bs) * bs) for n in names)
        need += per_token * tokens
    return min(need, CPU_KV_BYTES)
