"""Paged-attention test cases shared by the Triton and native CPU kernel tests: random paged
caches and a naive per-sequence reference."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}
JUNK_BLOCK = 1 << 30  # table entries past a sequence's end: reading one would fault or corrupt


def paged_batch(context_lens, block_size, num_kv_heads, head_dim, dtype, seed=0):
    """Random caches and block tables: shuffled blocks; every sequence whose first block is full
    shares it with sequence 0 (a common prompt prefix); junk past each sequence's end."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-n // block_size) for n in context_lens]
    max_blocks = max(blocks_needed) + 1
    num_blocks = sum(blocks_needed) + 3
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(context_lens), max_blocks), -1, dtype=torch.int32)
    for b, need in enumerate(blocks_needed):
        for i in range(need):
            shared = b > 0 and i == 0 and min(context_lens[0], context_lens[b]) > block_size
            tables[b, i] = tables[0, 0] if shared else free.pop()
        tables[b, need:] = JUNK_BLOCK if b % 2 else -1
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    lens = torch.tensor(context_lens, dtype=torch.int32, device=DEVICE)
    return k_cache, v_cache, tables.to(DEVICE), lens


def naive_attention(q, k_cache, v_cache, tables, cu_seqlens, context_lens, scale):
    """Materialise each sequence's K/V token by token and apply softmax(QK^T)V with a causal mask."""
    block_size = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    out = torch.empty_like(q)
    for b in range(context_lens.shape[0]):
        start, end, ctx = int(cu_seqlens[b]), int(cu_seqlens[b + 1]), int(context_lens[b])
        rows = [(int(tables[b, t // block_size]), t % block_size) for t in range(ctx)]
        k = torch.stack([k_cache[blk, off] for blk, off in rows]).float().repeat_interleave(group, dim=1)
        v = torch.stack([v_cache[blk, off] for blk, off in rows]).float().repeat_interleave(group, dim=1)
        qb = q[start:end].float()
        scores = torch.einsum("qhd,khd->hqk", qb, k) * scale
        q_pos = ctx - (end - start) + torch.arange(end - start, device=q.device)
        visible = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)
    return out


def fused_query(num_tokens, num_heads, num_kv_heads, head_dim, dtype, seed=1):
    """q as the non-contiguous first slice of a fused qkv projection output."""
    gen = torch.Generator().manual_seed(seed)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=gen).to(DEVICE, dtype)
    return qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)
