"""Triton paged attention: KV store, prefill/extend attention and split-KV decode attention.

Same signatures and semantics as ``attention_ref.py`` (cache layout is described there).
Every kernel reads K/V through the block table one token tile at a time: a tile of
``BLOCK_N`` tokens may span several cache blocks, each token's page comes from the
table, and each row of ``head_dim`` values is one contiguous vector load.
GQA: one program serves all query heads that share a KV head, so each K/V tile is
read once per KV head. Softmax runs online in the exp2 domain, accumulating in float32.
No host synchronisation anywhere (safe under CUDA graph capture).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .errors import KernelInputError

LOG2_E = 1.4426950408889634
MAX_HEAD_DIM = 256
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 32
CTAS_PER_SM_TARGET = 8


# ----------------------------------------------------------------------------- KV store


@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_kv_heads,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    d = tl.arange(0, BLOCK_D)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    heads_to_write = tl.where(slot >= 0, num_kv_heads, 0)  # (the interpreter rejects scalar & tensor masks)
    mask = (h < heads_to_write)[:, None] & (d < HEAD_DIM)[None, :]
    page = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    k = tl.load(key_ptr + token * stride_kt + h[:, None] * stride_kh + d[None, :] * stride_kd, mask=mask)
    v = tl.load(value_ptr + token * stride_vt + h[:, None] * stride_vh + d[None, :] * stride_vd, mask=mask)
    k_dst = k_cache_ptr + page * stride_kcb + offset * stride_kcs + h[:, None] * stride_kch + d[None, :] * stride_kcd
    v_dst = v_cache_ptr + page * stride_vcb + offset * stride_vcs + h[:, None] * stride_vch + d[None, :] * stride_vcd
    tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write key/value ``[N, Hkv, D]`` into the cache slots; slots < 0 are padding and skipped."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    block_d = triton.next_power_of_2(head_dim)
    block_heads = min(triton.next_power_of_2(num_kv_heads), max(1, 2048 // block_d))
    _store_kv_kernel[(num_tokens, triton.cdiv(num_kv_heads, block_heads))](
        key, value, k_cache, v_cache, slot_mapping.contiguous(), num_kv_heads,
        *key.stride(), *value.stride(), *k_cache.stride(), *v_cache.stride(),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_HEADS=block_heads, BLOCK_SIZE=k_cache.shape[1],
    )


# ----------------------------------------------------------------------------- shared tile helpers


@triton.jit
def _load_tile(
    cache_ptr, slots, token_ok, stride_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr
):
    """``[BLOCK_N, BLOCK_D]`` rows at element offsets ``slots`` (one contiguous head vector each)."""
    d = tl.arange(0, BLOCK_D)
    ptrs = cache_ptr + slots[:, None] + d[None, :] * stride_d
    if MASKED:
        return tl.load(ptrs, mask=token_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    elif BLOCK_D != HEAD_DIM:
        return tl.load(ptrs, mask=d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _attend_kv_tile(
    q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_row_ptr, start, end, kv_head, scale_log2, mask,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Fold keys ``start .. start+BLOCK_N`` (those < ``end`` when MASKED) of one KV head into the state.

    The tile may span several cache blocks: each token's page comes from the block table.
    """
    tokens = start + tl.arange(0, BLOCK_N)
    token_ok = tokens < end
    if MASKED:
        pages = tl.load(table_row_ptr + tokens // BLOCK_SIZE, mask=token_ok, other=0).to(tl.int64)
    else:
        pages = tl.load(table_row_ptr + tokens // BLOCK_SIZE).to(tl.int64)
    offsets = tokens % BLOCK_SIZE
    k_slots = pages * stride_kb + offsets * stride_ks + kv_head * stride_kh
    v_slots = pages * stride_vb + offsets * stride_vs + kv_head * stride_vh
    k = _load_tile(k_cache_ptr, k_slots, token_ok, stride_kd, HEAD_DIM, BLOCK_D, MASKED)
    v = _load_tile(v_cache_ptr, v_slots, token_ok, stride_vd, HEAD_DIM, BLOCK_D, MASKED)
    return _online_softmax_step(q, k, v, m_i, l_i, acc, scale_log2, mask, MASKED, PRECISION)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    if PRECISION == "upcast":  # see _dot_precision
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b.to(a.dtype), input_precision=PRECISION)


@triton.jit
def _online_softmax_step(q, k, v, m_i, l_i, acc, scale_log2, mask, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one K/V tile into the running (max, sum, accumulator) of each query row."""
    s = _dot(q, tl.trans(k), PRECISION) * scale_log2
    if MASKED:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no key yet keeps m = -inf; shift by 0 there to avoid inf - inf.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_shift[:, None])
    alpha = tl.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
    return m_new, l_i, acc


# ----------------------------------------------------------------------------- prefill / extend


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, table_ptr, cu_seqlens_ptr, context_lens_ptr,
    scale_log2, batch, search_steps,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_tb, stride_tn,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    # Sequence b owns tiles first_tile(b) = cu[b] // BLOCK_Q + b onwards (monotone, no overlap):
    # binary-search the last b whose first tile is <= this one.
    lo = tile * 0
    hi = lo + batch
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(cu_seqlens_ptr + mid) // BLOCK_Q + mid <= tile
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    seq = lo
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    q_block = tile - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= q_len:
        return

    # Rows pack BLOCK_Q query tokens x GROUP_PAD query heads sharing this KV head.
    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    tok = q_block * BLOCK_Q + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (tok < q_len) & (g < GROUP)
    head = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)
    io_mask = row_ok[:, None] & (d[None, :] < HEAD_DIM)
    token_index = (q_start + tok).to(tl.int64)
    q = tl.load(
        q_ptr + (token_index * stride_qt + head * stride_qh)[:, None] + d[None, :] * stride_qd,
        mask=io_mask, other=0.0,
    )

    ctx = tl.load(context_lens_ptr + seq)
    q_pos = ctx - q_len + tok  # padding rows get q_pos >= ctx: they attend to all keys, never stored
    first_pos = ctx - q_len + q_block * BLOCK_Q
    kv_end = tl.minimum(ctx, first_pos + BLOCK_Q)
    full_end = (first_pos + 1) // BLOCK_N * BLOCK_N  # keys before this are visible to every row

    table_row = table_ptr + seq.to(tl.int64) * stride_tb
    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, BLOCK_D], tl.float32)
    for start in range(0, full_end, BLOCK_N):
        m_i, l_i, acc = _attend_kv_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_row, start, kv_end, kv_head, scale_log2, None,
            stride_kb, stride_ks, stride_kh, stride_kd, stride_vb, stride_vs, stride_vh, stride_vd,
            HEAD_DIM, BLOCK_D, BLOCK_N, BLOCK_SIZE, False, PRECISION,
        )
    for start in range(full_end, kv_end, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)
        mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < ctx)
        m_i, l_i, acc = _attend_kv_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_row, start, kv_end, kv_head, scale_log2, mask,
            stride_kb, stride_ks, stride_kh, stride_kd, stride_vb, stride_vs, stride_vh, stride_vd,
            HEAD_DIM, BLOCK_D, BLOCK_N, BLOCK_SIZE, True, PRECISION,
        )

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + (token_index * stride_ot + head * stride_oh)[:, None] + d[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty), mask=io_mask,
    )


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of variable-length query chunks over their paged context.

    Sequence ``b`` owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of ``q`` ``[N, Hq, D]``,
    the last ``q_len`` tokens of its ``context_lens[b]``; their K/V are already cached.
    """
    num_tokens, num_heads, head_dim = q.shape
    group = _check_heads(q, k_cache)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    batch = context_lens.shape[0]
    if num_tokens == 0 or batch == 0:
        return out
    group_pad = triton.next_power_of_2(group)
    block_m, block_n, num_warps = _prefill_config(head_dim, q.dtype, q.is_cuda)
    block_m = max(block_m, group_pad)
    block_q = block_m // group_pad
    # sum over b of cdiv(q_len_b, block_q) <= num_tokens // block_q + batch
    grid = (num_tokens // block_q + batch, k_cache.shape[2])
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, cu_seqlens_q.contiguous(), context_lens.contiguous(),
        scale * LOG2_E, batch, max(1, batch.bit_length()),
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_SIZE=k_cache.shape[1],
        PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=2,
    )
    return out


# ----------------------------------------------------------------------------- decode (split-KV)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_lse_ptr, table_ptr, context_lens_ptr,
    scale_log2, num_splits,
    stride_qb, stride_qh, stride_qd,
    stride_ob, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_tb, stride_tn,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + seq)
    per_split = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, ctx)
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N

    g = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)
    io_mask = (g[:, None] < GROUP) & (d[None, :] < HEAD_DIM)
    q = tl.load(
        q_ptr + seq.to(tl.int64) * stride_qb + head[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=io_mask, other=0.0,
    )
    table_row = table_ptr + seq.to(tl.int64) * stride_tb
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for tile_start in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = _attend_kv_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_row, tile_start, end, kv_head, scale_log2, None,
            stride_kb, stride_ks, stride_kh, stride_kd, stride_vb, stride_vs, stride_vh, stride_vd,
            HEAD_DIM, BLOCK_D, BLOCK_N, BLOCK_SIZE, False, PRECISION,
        )
    if full_end < end:
        mask = (full_end + tl.arange(0, BLOCK_N))[None, :] < end
        m_i, l_i, acc = _attend_kv_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_row, full_end, end, kv_head, scale_log2, mask,
            stride_kb, stride_ks, stride_kh, stride_kd, stride_vb, stride_vs, stride_vh, stride_vd,
            HEAD_DIM, BLOCK_D, BLOCK_N, BLOCK_SIZE, True, PRECISION,
        )

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if SPLIT:
        # Partials are contiguous [B, Hq, S, D] and [B, Hq, S]; lse is in the log2 domain.
        part_row = (seq * tl.num_programs(1) * GROUP + head).to(tl.int64) * num_splits + split
        tl.store(part_out_ptr + part_row[:, None] * HEAD_DIM + d[None, :], out, mask=io_mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(part_lse_ptr + part_row, lse, mask=g < GROUP)
    else:
        tl.store(
            out_ptr + seq.to(tl.int64) * stride_ob + head[:, None] * stride_oh + d[None, :] * stride_od,
            out.to(out_ptr.dtype.element_ty), mask=io_mask,
        )


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, num_splits,
    stride_ob, stride_oh, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = (seq * tl.num_programs(1) + head).to(tl.int64) * num_splits
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(part_lse_ptr + row + s, mask=s < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    weight = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # empty splits weigh 0
    parts = tl.load(
        part_out_ptr + (row + s)[:, None] * HEAD_DIM + d[None, :],
        mask=(s[:, None] < num_splits) & (d[None, :] < HEAD_DIM), other=0.0,
    )
    total = tl.sum(weight, 0)
    out = tl.sum(parts * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    dst = out_ptr + seq.to(tl.int64) * stride_ob + head * stride_oh + d * stride_od
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One query token per sequence (``q`` is ``[B, Hq, D]``) over its whole paged context.

    The context is cut into ``num_splits`` ranges handled by separate programs (flash-decoding),
    then merged by their log-sum-exp; ``None`` picks a split count that fills the device.
    """
    batch, num_heads, head_dim = q.shape
    group = _check_heads(q, k_cache)
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size, _num_sms(q))
    num_splits = max(1, int(num_splits))
    split = num_splits > 1
    part_out = torch.empty((batch, num_heads, num_splits, head_dim) if split else (1,),
                           dtype=torch.float32, device=q.device)
    part_lse = torch.empty((batch, num_heads, num_splits) if split else (1,), dtype=torch.float32, device=q.device)
    block_n, num_warps = _decode_config(head_dim, q.dtype)
    block_d = _block_d(head_dim)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_out, part_lse, block_tables, context_lens.contiguous(),
        scale * LOG2_E, num_splits,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(), *block_tables.stride(),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        SPLIT=split, PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=2,
    )
    if split:
        _decode_reduce_kernel[(batch, num_heads)](
            part_out, part_lse, out, num_splits, *out.stride(),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits),
        )
    return out


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, num_sms: int) -> int:
    """Enough (sequence, KV head, split) programs for several waves, no split under MIN_TOKENS_PER_SPLIT."""
    wanted = triton.cdiv(CTAS_PER_SM_TARGET * num_sms, batch * num_kv_heads)
    most = triton.cdiv(max_context, MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, most, MAX_SPLITS))


# ----------------------------------------------------------------------------- launch helpers


def _check_heads(q: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Validate head counts/dims (properties of the model) and return the GQA group size."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if head_dim > MAX_HEAD_DIM or head_dim != k_cache.shape[3]:
        raise KernelInputError(
            f"head_dim {head_dim} (cache {k_cache.shape[3]}) unsupported by Triton attention (max {MAX_HEAD_DIM})"
        )
    if num_heads % num_kv_heads:
        raise KernelInputError(f"{num_heads} query heads not a multiple of {num_kv_heads} KV heads")
    return num_heads // num_kv_heads


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs K >= 16


def _dot_precision(dtype: torch.dtype) -> str:
    """The precision only applies to float32 operands; "upcast" dots in float32.

    Triton's CPU interpreter computes bfloat16 tl.dot wrongly (garbage), so there
    bfloat16 tiles are multiplied in float32; loads, stores and conversions stay as on GPU.
    """
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def _prefill_config(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> tuple[int, int, int]:
    """(query rows per tile, keys per tile, warps)."""
    if not on_gpu:
        return 16, 16, 4  # the interpreter: small tiles keep masked work low
    if dtype == torch.float32:
        return 64, 32, 4  # tests only: keep the float32 tiles out of local memory
    if head_dim <= 64:
        return 128, 64, 4
    if head_dim <= 128:
        return 128, 64, 8
    return 64, 32, 8


def _decode_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(keys per tile, warps)."""
    return (64, 4) if head_dim <= 128 and dtype != torch.float32 else (32, 4)


def _num_sms(q: torch.Tensor) -> int:
    if q.is_cuda:
        return torch.cuda.get_device_properties(q.device).multi_processor_count
    return 4
