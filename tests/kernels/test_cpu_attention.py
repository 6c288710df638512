"""The native CPU paged-attention kernel (kernels/cpu_attention.c) against attention_ref.py and a
naive per-sequence loop: decode, prefill, prefill over a cached prefix, GQA groups, block sizes,
head dims and both dtypes."""

import pytest
import torch
from bare_engine.kernels import cpu_attention
from bare_engine.kernels.attention_ref import paged_attention_ref, store_kv_ref
from bare_engine.kernels.errors import KernelInputError
from paged_cases import assert_close, fused_query, naive_attention, paged_batch

pytestmark = pytest.mark.skipif(not cpu_attention.available(),
                                reason=f"native CPU attention not built: {cpu_attention.build_error()}")

# (query tokens, context tokens): decodes, a whole prompt, chunks over a cached prefix, and
# chunks longer than one tile of the kernel.
MIXED = [(1, 1), (1, 37), (13, 45), (40, 40), (1, 200), (70, 100), (33, 33)]


def run_case(cases, group, head_dim, block_size, dtype, num_kv_heads=2, seed=0):
    q_lens = [q for q, _ in cases]
    k_cache, v_cache, tables, ctx = paged_batch([c for _, c in cases], block_size, num_kv_heads, head_dim, dtype,
                                                seed=seed)
    q = fused_query(sum(q_lens), group * num_kv_heads, num_kv_heads, head_dim, dtype, seed=seed + 1)
    cu = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    scale = head_dim**-0.5
    out = cpu_attention.paged_attention(q, k_cache, v_cache, tables, cu, ctx, scale)
    assert out.shape == q.shape and out.dtype == dtype
    return out, (q, k_cache, v_cache, tables, cu, ctx, scale)


@pytest.mark.parametrize(
    "group, head_dim, block_size, dtype",
    [
        (1, 64, 16, torch.float32),
        (3, 64, 16, torch.float32),
        (3, 64, 16, torch.bfloat16),
        (4, 128, 32, torch.float32),
        (8, 32, 4, torch.bfloat16),
        (2, 16, 1, torch.float32),
        (5, 80, 64, torch.float32),
        (2, 256, 16, torch.bfloat16),
    ],
)
def test_matches_reference_and_naive(group, head_dim, block_size, dtype):
    out, args = run_case(MIXED, group, head_dim, block_size, dtype)
    assert_close(out, paged_attention_ref(*args), dtype)
    assert_close(out, naive_attention(*args), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group, head_dim", [(3, 64), (4, 128)])
def test_decode_batch_matches_reference(group, head_dim, dtype):
    """Enough decodes for the kernel to give each work item all KV heads of a sequence."""
    out, args = run_case([(1, n) for n in (1, 2, 15, 16, 17, 300, 64, 5, 33, 100)], group, head_dim, 16, dtype)
    assert_close(out, paged_attention_ref(*args), dtype)
    assert_close(out, naive_attention(*args), dtype)


def test_same_result_whatever_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, args = run_case(MIXED, 3, 64, 16, torch.float32)
        torch.set_num_threads(2)
        two = cpu_attention.paged_attention(*args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each row is computed by one thread in one order


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_of_a_sequence_do_not_depend_on_its_batch(dtype):
    """Alone, a sequence's work items hold one KV head each; in the batch, all of them."""
    out, (q, k_cache, v_cache, tables, cu, ctx, scale) = run_case(MIXED, 3, 64, 16, dtype)
    for b in (2, 4, 5):  # a prefix chunk, a decode and a chunk longer than a tile, each alone in its batch
        rows = slice(int(cu[b]), int(cu[b + 1]))
        alone_cu = torch.tensor([0, rows.stop - rows.start], dtype=torch.int32)
        alone = cpu_attention.paged_attention(q[rows], k_cache, v_cache, tables[b:b + 1], alone_cu, ctx[b:b + 1], scale)
        assert torch.equal(alone, out[rows])


def test_causal_within_a_chunk():
    """Changing a later token's K/V must not change earlier rows' output."""
    out, (q, k_cache, v_cache, tables, cu, ctx, scale) = run_case([(20, 20)], 1, 32, 16, torch.float32, num_kv_heads=1)
    k_cache[int(tables[0, 1]), 19 - 16] += 5.0
    after = cpu_attention.paged_attention(q, k_cache, v_cache, tables, cu, ctx, scale)
    assert torch.equal(out[:19], after[:19]) and not torch.equal(out[19], after[19])


def test_bad_inputs_raise():
    _, (q, k_cache, v_cache, tables, cu, ctx, scale) = run_case([(3, 9)], 2, 32, 16, torch.float32)
    with pytest.raises(KernelInputError, match="int32"):
        cpu_attention.paged_attention(q, k_cache, v_cache, tables.long(), cu, ctx, scale)
    with pytest.raises(KernelInputError, match="float32 or bfloat16"):
        cpu_attention.paged_attention(q.half(), k_cache.half(), v_cache.half(), tables, cu, ctx, scale)
    with pytest.raises(KernelInputError, match="do not fit"):
        cpu_attention.paged_attention(q[:, :3], k_cache, v_cache, tables, cu, ctx, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_writes_what_the_reference_writes(dtype):
    """Keys and values as head slices of a fused qkv row, padding slots skipped, other slots untouched."""
    num_blocks, block_size, heads, head_dim = 6, 4, 2, 8
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(5, (3 + 2 * heads) * head_dim, generator=gen).to(dtype)
    _, key, value = qkv.split([3 * head_dim, heads * head_dim, heads * head_dim], dim=-1)
    key, value = key.reshape(5, heads, head_dim), value.reshape(5, heads, head_dim)
    slots = torch.tensor([3, -1, 17, 0, 23])
    caches = [torch.randn(num_blocks, block_size, heads, head_dim, generator=gen).to(dtype) for _ in range(2)]
    expected = [c.clone() for c in caches]
    cpu_attention.store_kv(key, value, *caches, slots)
    store_kv_ref(key, value, *expected, slots)
    assert all(torch.equal(a, b) for a, b in zip(caches, expected))
    with pytest.raises(KernelInputError, match="past the cache"):
        cpu_attention.store_kv(key, value, *caches, torch.tensor([0, 1, 2, 3, num_blocks * block_size]))
    assert all(torch.equal(a, b) for a, b in zip(caches, expected))  # nothing written


def shared_prompt_batch(groups, block_size, num_kv_heads, head_dim, dtype, seed=0):
    """Block tables where each group's sequences start with the same `shared` blocks (a prompt
    served from the prefix cache) and go on in blocks of their own: groups of (shared, [contexts])."""
    gen = torch.Generator().manual_seed(seed)
    contexts = [n for _, lens in groups for n in lens]
    max_blocks = max(-(-n // block_size) for n in contexts)
    num_blocks = sum(shared + sum(-(-n // block_size) - shared for n in lens) for shared, lens in groups)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    rows = []
    for shared, lens in groups:
        prefix = [free.pop() for _ in range(shared)]
        rows += [prefix + [free.pop() for _ in range(-(-n // block_size) - shared)] for n in lens]
    tables = torch.tensor([r + [-1] * (max_blocks - len(r)) for r in rows], dtype=torch.int32)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
    return k_cache, v_cache, tables, torch.tensor(contexts, dtype=torch.int32)


# Decodes over two prompts of 8 and 20 blocks, one sequence whose context is the shared prompt plus
# its first token, a group sharing 2 blocks (too few to share items), and strangers.
SHARED_GROUPS = [(8, [129, 130, 150, 200, 257, 300, 140, 133, 129, 160, 170, 180, 190]),
                 (20, [321, 330, 400, 401, 500, 333, 340]), (2, [40, 60, 80]), (0, [50, 77, 300])]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decodes_sharing_a_prompt_read_it_once_with_the_same_result(dtype, threads):
    """Decodes over the same leading blocks go several to a work item; every row comes out bit for
    bit as when each sequence has its own item, and matches the reference."""
    num_kv_heads, group, head_dim = 3, 3, 64
    k_cache, v_cache, tables, ctx = shared_prompt_batch(SHARED_GROUPS, 16, num_kv_heads, head_dim, dtype)
    n = len(ctx)
    q = fused_query(n, group * num_kv_heads, num_kv_heads, head_dim, dtype, seed=3)
    cu = torch.arange(n + 1, dtype=torch.int32)
    args = (q, k_cache, v_cache, tables, cu, ctx, head_dim**-0.5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert cpu_attention.shared_decodes(q, k_cache, tables, cu, ctx) == 13 + 7
        shared = cpu_attention.paged_attention(*args)
        alone = cpu_attention.paged_attention(*args, share_prefix=False)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(shared, alone)
    assert_close(shared, naive_attention(*args), dtype)


def test_only_decodes_of_batches_with_work_for_every_thread_share():
    """Two decodes keep an item each (the threads split their heads instead); beside a prompt's
    chunk, the decodes share items and the chunk keeps its own tiles."""
    k_cache, v_cache, tables, ctx = shared_prompt_batch([(8, [200, 210])], 16, 3, 64, torch.float32)
    q = fused_query(2, 9, 3, 64, torch.float32)
    assert cpu_attention.shared_decodes(q, k_cache, tables, torch.arange(3, dtype=torch.int32), ctx) == 0
    k_cache, v_cache, tables, ctx = shared_prompt_batch([(8, [200] * 12)], 16, 3, 64, torch.float32)
    cu = torch.tensor([0, 40] + list(range(41, 52)), dtype=torch.int32)  # the first: a 40-token chunk
    q = fused_query(51, 9, 3, 64, torch.float32)
    assert cpu_attention.shared_decodes(q, k_cache, tables, cu, ctx) == 11
    out = cpu_attention.paged_attention(q, k_cache, v_cache, tables, cu, ctx, 0.125)
    assert_close(out, naive_attention(q, k_cache, v_cache, tables, cu, ctx, 0.125), torch.float32)
