"""Torch reference for paged attention: the semantics every attention kernel must match.

Cache layout (one pair per layer): ``k_cache`` and ``v_cache`` are
``[num_blocks, block_size, num_kv_heads, head_dim]``. Token ``t`` of a sequence
lives in block ``block_tables[b, t // block_size]`` at offset ``t % block_size``;
its flat slot is ``block * block_size + offset``.

These functions are also the engine's portable attention backend (CPU, or any
device without Triton), so they are vectorised over the batch rather than looping.
"""

from __future__ import annotations

import torch


def store_kv_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write key/value ``[N, Hkv, D]`` into the cache slots; slots < 0 are padding and skipped."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    slots = slot_mapping.long()
    # index_copy_ rather than `cache[slots] = ...`: the latter is orders of magnitude slower on CPU.
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value.to(v_cache.dtype))


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """Materialise ``[B, max_len, Hkv, D]`` from the paged cache (entries past a sequence's end are junk)."""
    block_size = cache.shape[1]
    num_blocks = (max_len + block_size - 1) // block_size
    table = block_tables[:, :num_blocks].long().clamp(min=0)
    batch = table.shape[0]
    # index_select over flat block ids: much faster on CPU than advanced indexing `cache[table]`.
    gathered = cache.index_select(0, table.reshape(-1))  # [B * nb, bs, Hkv, D]
    return gathered.view(batch, num_blocks * block_size, *cache.shape[2:])[:, :max_len]


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of variable-length query chunks over their paged context.

    ``q`` is ``[N, Hq, D]``: sequence ``b`` owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``,
    which are the *last* ``q_len`` tokens of its context of ``context_lens[b]`` tokens.
    Their K/V must already be in the cache. Returns ``[N, Hq, D]`` in q's dtype.
    """
    cu = cu_seqlens_q.long()
    single = (cu[1:] - cu[:-1]) == 1
    if bool(single.all()) or not bool(single.any()):
        return _padded_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    # A mixed batch: padding every decode row to the longest prompt chunk would multiply its
    # work, so decodes and chunks are attended separately.
    out = torch.empty_like(q)
    seq_of_token = torch.searchsorted(cu[1:], torch.arange(q.shape[0], device=q.device), right=True)
    for group in (single, ~single):
        seqs = group.nonzero().flatten()
        tokens = group[seq_of_token].nonzero().flatten()
        lens = cu[seqs + 1] - cu[seqs]
        sub_cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
        out[tokens] = _padded_attention(
            q[tokens], k_cache, v_cache, block_tables[seqs], sub_cu, context_lens[seqs], scale
        )
    return out


def _padded_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale) -> torch.Tensor:
    device = q.device
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    batch = context_lens.shape[0]
    q_lens = cu[1:] - cu[:-1]
    ctx = context_lens.long()
    max_q = int(q_lens.max())
    max_k = int(ctx.max())

    # Scatter q into a padded [B, max_q, Hq, D] layout; row_of_token is each token's flat row in it.
    token = torch.arange(num_tokens, device=device)
    seq_of_token = torch.searchsorted(cu[1:], token, right=True)
    row_of_token = seq_of_token * max_q + token - cu[:-1][seq_of_token]
    q_pad = q.new_zeros(batch * max_q, num_heads, head_dim).index_copy_(0, row_of_token, q)
    q_pad = q_pad.view(batch, max_q, num_heads, head_dim)

    # Table entries past a sequence's last block may be junk: never index the cache with them.
    block_size = k_cache.shape[1]
    blocks_used = (ctx + block_size - 1) // block_size
    columns = torch.arange(block_tables.shape[1], device=device)
    tables = torch.where(columns[None, :] < blocks_used[:, None], block_tables, torch.zeros_like(block_tables))
    k = gather_kv(k_cache, tables, max_k).to(q.dtype)
    v = gather_kv(v_cache, tables, max_k).to(q.dtype)

    # Query i of sequence b sits at position ctx_b - q_len_b + i and sees keys 0..that position.
    q_pos = (ctx - q_lens)[:, None] + torch.arange(max_q, device=device)[None, :]
    k_pos = torch.arange(max_k, device=device)
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < ctx[:, None, None])

    # GQA without copying K/V per query head: the `group` query heads that share a KV head
    # become extra query rows of that KV head (row i * group + j is query i, head j of the group).
    group = num_heads // num_kv_heads
    q_rows = q_pad.reshape(batch, max_q, num_kv_heads, group, head_dim).permute(0, 2, 1, 3, 4)
    q_rows = q_rows.reshape(batch, num_kv_heads, max_q * group, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q_rows,
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask[:, :, None, :].expand(batch, max_q, group, max_k).reshape(batch, 1, max_q * group, max_k),
        scale=scale,
    )  # [B, Hkv, max_q * group, D]
    out = out.reshape(batch, num_kv_heads, max_q, group, head_dim).permute(0, 2, 1, 3, 4)
    return out.reshape(batch * max_q, num_heads, head_dim).index_select(0, row_of_token)


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence (``q`` is ``[B, Hq, D]``) over its whole paged context."""
    cu = torch.arange(q.shape[0] + 1, device=q.device, dtype=torch.int32)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
