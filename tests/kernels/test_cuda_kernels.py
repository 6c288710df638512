"""Compiled Triton kernels (CUDA only) against their torch references at model shapes, in
float32, float16 and bfloat16. Run by scripts/gpu_check.sh; skipped without CUDA.

Attention is compared with the reference evaluated in float64 on the same (rounded) inputs,
by relative L2 error; outputs are poisoned with NaN first, so an unwritten element fails.
Sampling must give the reference's tokens exactly (the reference reproduces the kernel's
random bits), and its logprobs to float32 rounding.
"""

import math

import pytest
import torch

from bare_engine.kernels import attention as attn
from bare_engine.kernels import attention_ref as attn_ref
from bare_engine.kernels import sampling as tri
from bare_engine.kernels import sampling_ref as ref

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ||out - ref|| / ||ref|| against float64: float32 arithmetic, then half-precision rounding.
REL_TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
# (dtype, (query heads, KV heads, head dim)): every dtype at Qwen3's shape (GQA 4, head dim 128), and
# other groupings (GQA 1 and 7, head dim 64) in bf16 only, to keep Triton's compile time in bounds.
MODEL_HEADS = (32, 8, 128)
CASES = [(dtype, MODEL_HEADS) for dtype in DTYPES] + [(torch.bfloat16, (16, 16, 64)), (torch.bfloat16, (14, 2, 64))]
CASE_IDS = [f"{str(d).removeprefix('torch.')}-{h[0]}q-{h[1]}kv-d{h[2]}" for d, h in CASES]
BLOCK = 16


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected).norm() / expected.norm()).item()


def poison_next(shape, dtype) -> None:
    """Leave a NaN-filled block of this size in the caching allocator: the kernel's next output gets it."""
    torch.full(shape, math.nan, dtype=dtype, device="cuda")


def paged(context_lens, num_kv_heads, head_dim, dtype, seed):
    """Random caches, shuffled blocks, -1 past each sequence's end; sequences share no block."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    needed = [-(-n // BLOCK) for n in context_lens]
    num_blocks = sum(needed) + 4
    order = torch.randperm(num_blocks, generator=gen, device="cuda").to(torch.int32)
    tables = torch.full((len(context_lens), max(needed) + 1), -1, dtype=torch.int32, device="cuda")
    used = 0
    for b, n in enumerate(needed):
        tables[b, :n] = order[used:used + n]
        used += n
    shape = (num_blocks, BLOCK, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    v = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    return k, v, tables, torch.tensor(context_lens, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_store_kv_writes_exactly_the_reference_slots(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    num_blocks, kv_heads, head_dim = 64, 8, 128
    slots = torch.randperm(num_blocks * BLOCK, generator=gen, device="cuda")[:300]
    slots[::7] = -1  # padding rows write nothing
    key = torch.randn(300, kv_heads, head_dim, generator=gen, device="cuda").to(dtype)
    value = torch.randn(300, kv_heads, head_dim, generator=gen, device="cuda").to(dtype)
    caches = [torch.randn(num_blocks, BLOCK, kv_heads, head_dim, generator=gen, device="cuda").to(dtype)
              for _ in range(2)]
    expected = [c.clone() for c in caches]
    attn.store_kv(key, value, *caches, slots)
    attn_ref.store_kv_ref(key, value, *expected, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


@pytest.mark.parametrize("dtype, heads", CASES, ids=CASE_IDS)
def test_decode_matches_float64_reference(dtype, heads):
    num_heads, kv_heads, head_dim = heads
    context_lens = [1, 15, 16, 17, 255, 256, 257, 1000, 2048, 3001, 4096, 77] * 2
    k, v, tables, lens = paged(context_lens, kv_heads, head_dim, dtype, seed=1)
    q = torch.randn(len(context_lens), num_heads, head_dim, device="cuda").to(dtype)
    scale = head_dim**-0.5
    expected = attn_ref.decode_attention_ref(q.double(), k.double(), v.double(), tables, lens, scale)
    for num_splits in (None, 1, 7):  # the default split count, no split, and an uneven split
        poison_next(q.shape, dtype)
        out = attn.decode_attention(q, k, v, tables, lens, scale, num_splits=num_splits)
        assert out.dtype == dtype and torch.isfinite(out).all(), f"unwritten or NaN output, splits={num_splits}"
        assert rel_err(out, expected) < REL_TOL[dtype], f"splits={num_splits}"


@pytest.mark.parametrize("dtype, heads", CASES, ids=CASE_IDS)
def test_prefill_matches_float64_reference(dtype, heads):
    num_heads, kv_heads, head_dim = heads
    # (context, query tokens): whole prompts, chunks after a cached prefix, single-token rows.
    seqs = [(512, 512), (700, 37), (16, 16), (17, 1), (2049, 129), (1, 1), (300, 300), (1500, 64)]
    k, v, tables, lens = paged([c for c, _ in seqs], kv_heads, head_dim, dtype, seed=2)
    q_lens = torch.tensor([n for _, n in seqs], device="cuda")
    cu = torch.cat([q_lens.new_zeros(1), q_lens.cumsum(0)]).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads, head_dim, device="cuda").to(dtype)
    scale = head_dim**-0.5
    expected = attn_ref.paged_attention_ref(q.double(), k.double(), v.double(), tables, cu, lens, scale)
    poison_next(q.shape, dtype)
    out = attn.prefill_attention(q, k, v, tables, cu, lens, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, expected) < REL_TOL[dtype]


# ----------------------------------------------------------------------------- sampling


def mixed_params(batch: int, gen: torch.Generator) -> ref.SamplingTensors:
    """Rows cycle through greedy, plain sampling, each filter alone, all filters, and penalties."""
    kinds = [
        dict(temperature=0.0),
        dict(temperature=1.0),
        dict(temperature=0.8, top_k=50),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.2, min_p=0.05),
        dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1, frequency_penalty=0.2,
             presence_penalty=0.1),
        dict(temperature=0.0, repetition_penalty=1.3),
        dict(temperature=0.6, top_k=1),
    ]
    defaults = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, frequency_penalty=0.0,
                    presence_penalty=0.0)
    rows = [{**defaults, **kinds[i % len(kinds)]} for i in range(batch)]

    def column(name, dtype=torch.float32):
        return torch.tensor([r[name] for r in rows], dtype=dtype, device="cuda")

    return ref.SamplingTensors(
        **{name: column(name) for name in defaults if name != "top_k"},
        top_k=column("top_k", torch.int32),
        seed=torch.randint(0, 2**62, (batch,), generator=gen).cuda(),
        position=torch.randint(0, 1000, (batch,), generator=gen).cuda(),
        penalty_rows=torch.arange(batch, device="cuda"),
    )


def penalty_state(batch: int, vocab: int, gen: torch.Generator) -> ref.PenaltyState:
    state = ref.PenaltyState(batch, vocab, "cuda")
    for row in range(batch):
        history = torch.randint(0, vocab, (300,), generator=gen)
        state.reset_row(row, history[:200], history[200:])
    return state


@pytest.mark.parametrize("dtype, vocab", [(torch.float32, 32000)] + [(d, 151936) for d in DTYPES],
                         ids=lambda x: str(x).removeprefix("torch."))
def test_sampler_equals_reference_in_each_logits_dtype(dtype, vocab):
    gen = torch.Generator().manual_seed(vocab)
    batch = 48
    logits = (torch.randn(batch, vocab, generator=gen) * 3).cuda().to(dtype)
    params = mixed_params(batch, gen)
    state = penalty_state(batch, vocab, gen)
    got = tri.sample(logits, params, state, 5)
    expected = ref.sample(logits, params, state, 5)
    assert torch.equal(got.token_ids, expected.token_ids)
    assert torch.equal(got.top_ids, expected.top_ids)
    torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.top_logprobs, expected.top_logprobs, rtol=1e-4, atol=1e-4)
    greedy = params.temperature == 0
    plain = greedy & (params.repetition_penalty == 1)
    assert torch.equal(got.token_ids[plain], logits[plain].float().argmax(dim=1))


def test_sampler_seeded_rows_do_not_depend_on_the_batch():
    gen = torch.Generator().manual_seed(3)
    vocab, batch = 151936, 64
    logits = (torch.randn(batch, vocab, generator=gen) * 3).cuda().to(torch.bfloat16)
    params = mixed_params(batch, gen)
    state = penalty_state(batch, vocab, gen)
    full = tri.sample(logits, params, state).token_ids
    rows = torch.tensor([5, 17, 40, 63], device="cuda")
    fields = {name: getattr(params, name) for name in params.__dataclass_fields__}
    sub = ref.SamplingTensors(**{k: (v[rows] if v is not None else None) for k, v in fields.items()})
    assert torch.equal(tri.sample(logits[rows], sub, state).token_ids, full[rows])
