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
    plan = AttentionPlan.build(block_tables, cu_seqlens_q, context_lens, k_cache.shape[1], k_cache.shape[2],
                               q.shape[1] // k_cache.shape[2])
    return plan.attend(q, k_cache, v_cache, scale)


class AttentionPlan:
    """Everything about a step's attention that depends only on its metadata, built once per step
    and reused by every layer: the token -> padded-row maps, the clean block tables and the mask.

    Sequences are split into groups attended separately (decodes apart from prompt chunks, and
    within each kind, sequences of similar context length together), so no row is padded to a
    context or query length far above its own.
    """

    def __init__(self, groups: list[_Group], num_tokens: int):
        self.groups = groups
        self.num_tokens = num_tokens

    @classmethod
    def build(cls, block_tables, cu_seqlens_q, context_lens, block_size: int, num_kv_heads: int, group: int,
              bucket_ratio: float = 1.5) -> AttentionPlan:
        cu = cu_seqlens_q.long()
        q_lens = cu[1:] - cu[:-1]
        ctx = context_lens.long()
        num_tokens = int(cu[-1])
        q_host, ctx_host = q_lens.tolist(), ctx.tolist()
        order = sorted(range(len(q_host)), key=lambda b: (q_host[b] > 1, ctx_host[b]))
        groups, current = [], []
        for b in order:
            if current and (
                (q_host[b] > 1) != (q_host[current[0]] > 1) or ctx_host[b] > bucket_ratio * ctx_host[current[0]] + 64
            ):
                groups.append(current)
                current = []
            current.append(b)
        if current:
            groups.append(current)
        device = cu.device
        made = [_Group.build(torch.tensor(g, device=device), block_tables, cu, q_lens, ctx, block_size, num_kv_heads,
                             group) for g in groups]
        return cls(made, num_tokens)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        if len(self.groups) == 1 and self.groups[0].tokens is None:
            return self.groups[0].attend(q, k_cache, v_cache, scale)
        out = torch.empty_like(q)
        for g in self.groups:
            out[g.tokens] = g.attend(q[g.tokens], k_cache, v_cache, scale)
        return out


class _Group:
    """Sequences attended together in one padded [B, max_q, max_k] problem."""

    def __init__(self, tokens, row_of_token, batch, max_q, max_k, tables, mask, num_kv_heads, group):
        self.tokens = tokens  # the group's rows of q (None: all of them, in order)
        self.row_of_token = row_of_token
        self.batch, self.max_q, self.max_k = batch, max_q, max_k
        self.tables = tables
        self.mask = mask  # [B, 1, max_q * group, max_k] bool
        self.num_kv_heads, self.group = num_kv_heads, group

    @classmethod
    def build(cls, seqs, block_tables, cu, q_lens, ctx, block_size, num_kv_heads, group) -> _Group:
        device = cu.device
        lens, c = q_lens[seqs], ctx[seqs]
        batch = seqs.numel()
        max_q, max_k = int(lens.max()), int(c.max())
        total = int(lens.sum())
        if batch == q_lens.numel() and bool((seqs == torch.arange(batch, device=device)).all()):
            tokens = None
        else:
            starts = cu[:-1][seqs]
            tokens = torch.repeat_interleave(starts - torch.cat([lens.new_zeros(1), lens.cumsum(0)[:-1]]), lens) \
                + torch.arange(total, device=device)
        sub_cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
        token = torch.arange(total, device=device)
        seq_of_token = torch.searchsorted(sub_cu[1:], token, right=True)
        row_of_token = seq_of_token * max_q + token - sub_cu[:-1][seq_of_token]
        # Table entries past a sequence's last block may be junk: never index the cache with them.
        num_blocks = (max_k + block_size - 1) // block_size
        table = block_tables[seqs, :num_blocks].long()
        blocks_used = (c + block_size - 1) // block_size
        columns = torch.arange(num_blocks, device=device)
        tables = torch.where(columns[None, :] < blocks_used[:, None], table, torch.zeros_like(table))
        # Query i of sequence b sits at position ctx_b - q_len_b + i and sees keys 0..that position.
        q_pos = (c - lens)[:, None] + torch.arange(max_q, device=device)[None, :]
        k_pos = torch.arange(max_k, device=device)
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < c[:, None, None])
        mask = mask[:, :, None, :].expand(batch, max_q, group, max_k).reshape(batch, 1, max_q * group, max_k)
        return cls(tokens, row_of_token, batch, max_q, max_k, tables, mask, num_kv_heads, group)

    def attend(self, q, k_cache, v_cache, scale) -> torch.Tensor:
        num_tokens, num_heads, head_dim = q.shape
        batch, max_q, max_k, hkv, group = self.batch, self.max_q, self.max_k, self.num_kv_heads, self.group
        if max_q == 1:
            q_pad = q  # decodes: one row per sequence, already in order
        else:
            q_pad = q.new_zeros(batch * max_q, num_heads, head_dim).index_copy_(0, self.row_of_token, q)
        k = gather_kv(k_cache, self.tables, max_k).to(q.dtype)
        v = gather_kv(v_cache, self.tables, max_k).to(q.dtype)
        # GQA without copying K/V per query head: the `group` query heads that share a KV head
        # become extra query rows of that KV head (row i * group + j is query i, head j of the group).
        q_rows = q_pad.reshape(batch, max_q, hkv, group, head_dim).permute(0, 2, 1, 3, 4)
        q_rows = q_rows.reshape(batch, hkv, max_q * group, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q_rows, k.transpose(1, 2), v.transpose(1, 2), attn_mask=self.mask, scale=scale,
        )  # [B, Hkv, max_q * group, D]
        out = out.reshape(batch, hkv, max_q, group, head_dim).permute(0, 2, 1, 3, 4)
        out = out.reshape(batch * max_q, num_heads, head_dim)
        return out if max_q == 1 else out.index_select(0, self.row_of_token)


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
