"""Triton paged-attention kernels against a naive per-sequence loop and attention_ref.py.

On CPU they run through the Triton interpreter (tests/conftest.py), so shapes stay small.
"""

import pytest
import torch
from bare_engine.kernels.attention import (
    decode_attention,
    default_num_splits,
    prefill_attention,
    store_kv,
)
from bare_engine.kernels.attention_ref import (
    decode_attention_ref,
    paged_attention_ref,
    store_kv_ref,
)
from bare_engine.kernels.errors import KernelInputError
from paged_cases import DEVICE, assert_close, fused_query, naive_attention, paged_batch

pytestmark = pytest.mark.interpreter

# ----------------------------------------------------------------------------- store_kv


@pytest.mark.parametrize(
    "num_kv_heads, head_dim, dtype, cache_dtype",
    [
        (2, 24, torch.float32, torch.float32),
        (2, 64, torch.float32, torch.float16),  # converts on store
        (10, 256, torch.bfloat16, torch.bfloat16),  # 10 heads x 256: two head tiles per token
    ],
)
def test_store_kv_writes_slots_and_skips_padding(num_kv_heads, head_dim, dtype, cache_dtype):
    block_size = 16
    kv_width = num_kv_heads * head_dim
    qkv = torch.randn(6, 4 * head_dim + 2 * kv_width, device=DEVICE).to(dtype)  # fused projection: views are strided
    key = qkv[:, 4 * head_dim : 4 * head_dim + kv_width].view(6, num_kv_heads, head_dim)
    value = qkv[:, 4 * head_dim + kv_width :].view(6, num_kv_heads, head_dim)
    slots = torch.tensor([5, -1, 17, 63, -1, 32], dtype=torch.int32, device=DEVICE)
    k_cache = torch.zeros(4, block_size, num_kv_heads, head_dim, dtype=cache_dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()

    store_kv(key, value, k_cache, v_cache, slots)
    store_kv_ref(key, value, k_expected, v_expected, slots)

    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)
    assert torch.equal(k_cache[1, 1], key[2].to(cache_dtype))  # slot 17 = block 1, offset 1
    assert torch.equal(v_cache[3, 15], value[3].to(cache_dtype))
    assert int((k_cache.flatten(0, 1).abs().sum((1, 2)) > 0).sum()) == 4  # padding rows wrote nothing


# ----------------------------------------------------------------------------- prefill / extend

# (q_len, context_len) per sequence: a 1-token prompt, a prefix-cache hit, chunked prefill
# continuing mid-block, a full prompt spanning blocks, and a decode-like extend of one token.
RAGGED = [(13, 45), (1, 1), (16, 33), (40, 40), (1, 20)]


@pytest.mark.parametrize(
    "group, head_dim, block_size, dtype",
    [
        (1, 64, 16, torch.float32),
        (4, 32, 32, torch.float32),
        (8, 16, 16, torch.float32),
        (4, 128, 16, torch.float16),
        (2, 64, 64, torch.bfloat16),
    ],
)
def test_prefill_matches_naive_and_reference(group, head_dim, block_size, dtype):
    num_kv_heads = 2
    q_lens = [q for q, _ in RAGGED]
    k_cache, v_cache, tables, ctx = paged_batch([c for _, c in RAGGED], block_size, num_kv_heads, head_dim, dtype)
    q = fused_query(sum(q_lens), group * num_kv_heads, num_kv_heads, head_dim, dtype)
    cu = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
    scale = head_dim**-0.5

    out = prefill_attention(q, k_cache, v_cache, tables, cu, ctx, scale)

    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, naive_attention(q, k_cache, v_cache, tables, cu, ctx, scale), dtype)
    assert_close(out, paged_attention_ref(q, k_cache, v_cache, tables, cu, ctx, scale), dtype)


def test_prefill_head_dim_256_and_empty_sequence():
    """Largest head dim; a sequence with no new tokens contributes no rows."""
    q_lens, context_lens = [3, 0, 18], [19, 7, 18]
    k_cache, v_cache, tables, ctx = paged_batch(context_lens, 16, 1, 256, torch.float32)
    q = fused_query(sum(q_lens), 4, 1, 256, torch.float32)
    cu = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
    out = prefill_attention(q, k_cache, v_cache, tables, cu, ctx, 0.0625)
    assert_close(out, naive_attention(q, k_cache, v_cache, tables, cu, ctx, 0.0625), torch.float32)


def test_prefill_is_causal_within_the_chunk():
    """Changing a later token's K/V must not change earlier rows' output."""
    k_cache, v_cache, tables, ctx = paged_batch([20], 16, 1, 32, torch.float32)
    q = fused_query(20, 1, 1, 32, torch.float32)
    cu = torch.tensor([0, 20], dtype=torch.int32, device=DEVICE)
    before = prefill_attention(q, k_cache, v_cache, tables, cu, ctx, 0.2)
    last_block, last_offset = int(tables[0, 1]), 19 - 16
    k_cache[last_block, last_offset] += 5.0
    after = prefill_attention(q, k_cache, v_cache, tables, cu, ctx, 0.2)
    assert torch.equal(before[:19], after[:19])
    assert not torch.allclose(before[19], after[19])


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    "group, head_dim, block_size, num_splits, dtype",
    [
        (1, 64, 16, None, torch.float32),
        (4, 128, 16, 1, torch.float32),
        (4, 32, 32, 3, torch.float32),
        (8, 64, 16, 7, torch.float32),  # more splits than some sequences have tiles: empty splits
        (4, 64, 16, 2, torch.float16),
        (8, 32, 64, None, torch.bfloat16),
    ],
)
def test_decode_matches_naive_and_reference(group, head_dim, block_size, num_splits, dtype):
    num_kv_heads = 2
    context_lens = [37, 1, 130, 16, 71]
    k_cache, v_cache, tables, ctx = paged_batch(context_lens, block_size, num_kv_heads, head_dim, dtype)
    q = fused_query(len(context_lens), group * num_kv_heads, num_kv_heads, head_dim, dtype)
    cu = torch.arange(len(context_lens) + 1, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5

    out = decode_attention(q, k_cache, v_cache, tables, ctx, scale, num_splits=num_splits)

    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, naive_attention(q, k_cache, v_cache, tables, cu, ctx, scale), dtype)
    assert_close(out, decode_attention_ref(q, k_cache, v_cache, tables, ctx, scale), dtype)


def test_decode_reads_a_strided_cache_view():
    """A per-layer cache that is a view into an interleaved K/V buffer."""
    gen = torch.Generator().manual_seed(3)
    buffer = torch.randn(6, 16, 2, 2, 32, generator=gen).to(DEVICE)  # [blocks, block_size, K|V, Hkv, D]
    k_cache, v_cache = buffer[:, :, 0], buffer[:, :, 1]
    tables = torch.tensor([[4, 0, 2], [5, 1, -1]], dtype=torch.int32, device=DEVICE)
    ctx = torch.tensor([40, 17], dtype=torch.int32, device=DEVICE)
    q = fused_query(2, 8, 2, 32, torch.float32)
    out = decode_attention(q, k_cache, v_cache, tables, ctx, 0.3, num_splits=2)
    assert_close(out, decode_attention_ref(q, k_cache, v_cache, tables, ctx, 0.3), torch.float32)


def test_default_num_splits_fills_device_only_when_needed():
    assert default_num_splits(1, 8, 8192, num_sms=132) > 8  # one long sequence: split it
    assert default_num_splits(256, 8, 8192, num_sms=132) == 1  # enough programs already
    assert default_num_splits(1, 8, 128, num_sms=132) == 1  # too short to be worth splitting
    assert default_num_splits(64, 8, 4096, num_sms=132) >= 2


# ----------------------------------------------------------------------------- input checks


def test_unsupported_head_shapes_raise():
    k_cache = torch.zeros(2, 16, 2, 512, device=DEVICE)
    tables = torch.zeros(1, 1, dtype=torch.int32, device=DEVICE)
    ctx = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(KernelInputError, match="head_dim"):
        decode_attention(torch.zeros(1, 4, 512, device=DEVICE), k_cache, k_cache, tables, ctx, 1.0)
    k_cache = torch.zeros(2, 16, 2, 64, device=DEVICE)
    with pytest.raises(KernelInputError, match="multiple"):
        decode_attention(torch.zeros(1, 3, 64, device=DEVICE), k_cache, k_cache, tables, ctx, 1.0)
