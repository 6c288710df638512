"""Sampling: the torch reference against first principles, the Triton kernel against the
reference (under TRITON_INTERPRET=1 without a GPU, hence the small vocabularies).

How the kernel's sampling distribution is established without thousands of slow
interpreted draws: its kept set equals the reference's, its noise bits equal the
reference's Philox bit for bit, and its tokens equal the reference's row for row; the
reference's draws are checked against the exact distribution with many seeds.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import triton
import triton.language as tl
from bare_engine.kernels.errors import KernelInputError

from bare_engine.kernels import sampling as tri
from bare_engine.kernels import sampling_ref as ref

pytestmark = pytest.mark.interpreter


def make_params(batch: int, **columns) -> ref.SamplingTensors:
    """Neutral parameters (temperature 1, no filters, no penalties), overridden per column."""
    base = dict(
        temperature=torch.ones(batch),
        top_k=torch.zeros(batch, dtype=torch.int32),
        top_p=torch.ones(batch),
        min_p=torch.zeros(batch),
        repetition_penalty=torch.ones(batch),
        presence_penalty=torch.zeros(batch),
        frequency_penalty=torch.zeros(batch),
        seed=torch.arange(batch, dtype=torch.int64) * 7919 + 11,
        position=torch.zeros(batch, dtype=torch.int64),
    )
    for name, value in columns.items():
        if name in base and not isinstance(value, torch.Tensor):
            value = torch.tensor(value, dtype=base[name].dtype).expand(batch).clone()
        elif name in base:
            value = value.to(base[name].dtype)
        base[name] = value
    return ref.SamplingTensors(**base)


def select_rows(params: ref.SamplingTensors, rows) -> ref.SamplingTensors:
    rows = torch.as_tensor(rows)
    fields = {name: getattr(params, name) for name in params.__dataclass_fields__}
    return ref.SamplingTensors(**{k: (v[rows] if v is not None else None) for k, v in fields.items()})


def processed(logits, params, penalties=None):
    return ref.scaled_logits(ref.penalized_logits(logits, params, penalties), params)


def random_params(batch: int, gen: torch.Generator) -> ref.SamplingTensors:
    """A mixed batch: greedy rows, plain sampling, and every filter combination."""
    pick = torch.randint(0, 8, (batch,), generator=gen)
    return make_params(
        batch,
        temperature=torch.where(pick == 0, 0.0, 0.3 + 1.5 * torch.rand(batch, generator=gen)),
        top_k=torch.where(pick % 2 == 1, torch.randint(1, 60, (batch,), generator=gen), 0),
        top_p=torch.where((pick == 2) | (pick >= 6), 0.2 + 0.79 * torch.rand(batch, generator=gen), 1.0),
        min_p=torch.where((pick == 4) | (pick == 7), 0.3 * torch.rand(batch, generator=gen), 0.0),
        seed=torch.randint(-(2**40), 2**40, (batch,), generator=gen),
        position=torch.randint(0, 5000, (batch,), generator=gen),
    )


def kernel_kept(logits, params, penalties=None, **kw):
    result, tau = tri._sample(logits, params, penalties, None, **kw)
    return ref.kept_mask(processed(logits, params, penalties), tau), result


def ref_kept(logits, params, penalties=None):
    z = processed(logits, params, penalties)
    return ref.kept_mask(z, ref.filter_threshold(z, params))


def edge_case_batch(vocab: int = 64):
    """Rows that stress the definitions: ties at every boundary, degenerate parameters."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(12, vocab, generator=gen) * 2
    logits[1, :] = logits[1, :].round()  # many ties
    logits[2, :] = 0.5  # all equal
    logits[3, :10] = 9.0  # ten-way tie for the top
    allowed = torch.ones(12, vocab, dtype=torch.bool)
    allowed[4] = False
    allowed[4, 17] = True  # one allowed token
    allowed[5, ::2] = False
    params = make_params(
        12,
        temperature=[1.0, 0.7, 1.0, 1.0, 1.3, 0.9, 1.0, 1.0, 2.0, 0.5, 1.0, 1.0],
        top_k=[vocab + 5, 7, 3, 4, 2, 5, vocab, 1, 0, 0, 3, 0],
        top_p=[1.0, 0.6, 0.5, 0.9, 0.1, 0.8, 1.0, 1.0, 1e-6, 1.0, 0.3, 0.9999],
        min_p=[0.0, 0.0, 0.1, 0.0, 0.9, 0.05, 0.0, 0.0, 0.0, 1.0, 0.2, 0.0],
        allowed_mask=allowed,
    )
    return logits, params


# ----------------------------------------------------------------------------- noise


@triton.jit
def _randint4x_kernel(seed_ptr, offset_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), tl.load(offset_ptr + offs))
    tl.store(out_ptr + offs, r0.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + N + offs, r1.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + 2 * N + offs, r2.to(tl.int64) & 0xFFFFFFFF)
    tl.store(out_ptr + 3 * N + offs, r3.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _rand_kernel(seed_ptr, offset_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, tl.rand(tl.load(seed_ptr), tl.load(offset_ptr + offs)))


SEEDS = (0, 1, -5, 2**40 + 7, -(2**62), 2**63 - 1)


def test_reference_philox_matches_triton_randint4x_and_rand():
    gen = torch.Generator().manual_seed(1)
    n = 64
    for seed in SEEDS:
        position = torch.randint(0, 2**31, (n,), generator=gen)
        counter = torch.randint(0, 2**30, (n,), generator=gen)
        offsets = (position << 32) | counter
        seed_t = torch.tensor([seed])
        out = torch.empty(4, n, dtype=torch.int64)
        _randint4x_kernel[(1,)](seed_t, offsets, out, N=n)
        zero = torch.zeros_like(counter)
        expected = torch.stack(ref.philox4x32(seed_t.expand(n), counter, position, zero, zero))
        assert torch.equal(out, expected), seed
        # tl.rand is randint4x's first output mapped to [0, 1) by folding the sign.
        uniform = torch.empty(n)
        _rand_kernel[(1,)](seed_t, offsets, uniform, N=n)
        signed = expected[0] - (expected[0] >= 2**31).long() * 2**32
        folded = torch.where(signed < 0, -signed - 1, signed)
        assert torch.equal(uniform, folded.float() * 4.6566127342e-10), seed


def test_kernel_noise_bits_match_reference():
    gen = torch.Generator().manual_seed(2)
    for seed in SEEDS:
        position = int(torch.randint(0, 2**31, (1,), generator=gen))
        tokens = torch.randint(0, 200_000, (300,), generator=gen, dtype=torch.int32)
        expected = ref.random_bits(torch.tensor(seed), torch.tensor(position), tokens.long())
        assert torch.equal(tri.philox_bits(seed, position, tokens), expected)
        block = tri.philox_bits(seed, position, 1000, device="cpu")
        assert torch.equal(block, ref.random_bits(torch.tensor(seed), torch.tensor(position), torch.arange(1000)))
        rows = ref.row_random_bits(torch.tensor([seed, 5]), torch.tensor([position, 0]), 999)
        assert torch.equal(rows[0], block[:999])
    v = ref.uniform_noise(torch.tensor(3), torch.tensor(4), torch.arange(100_000))
    assert v.dtype == torch.float32 and bool((v > 0).all()) and bool((v <= 1).all())
    assert abs(float(v.double().mean()) - 0.5) < 0.005


# ----------------------------------------------------------------------------- filtering


def brute_force_kept(z: torch.Tensor, params: ref.SamplingTensors) -> torch.Tensor:
    """The documented filter rules, one row at a time in plain Python (float64 masses)."""
    kept = torch.zeros(z.shape, dtype=torch.bool)
    for b in range(z.shape[0]):
        values = z[b].tolist()
        finite = [v for v in values if v > -math.inf]
        if params.temperature[b] == 0:
            kept[b] = z[b] > -math.inf
            continue
        ordered = sorted(finite, reverse=True)
        z_max = ordered[0]
        thresholds = [-math.inf]
        k = int(params.top_k[b])
        if 0 < k <= len(finite) and k < len(values):
            thresholds.append(ordered[k - 1])
        top_p = float(params.top_p[b])
        if top_p < 1:
            weights = [math.exp(v - z_max) for v in ordered]
            target, total = top_p * sum(weights), 0.0
            for v, w in zip(ordered, weights):
                total += w
                if total >= target:
                    thresholds.append(v)
                    break
        if params.min_p[b] > 0:
            thresholds.append(float(torch.tensor(z_max) + torch.log(params.min_p[b])))
        tau = max(thresholds)
        kept[b] = torch.tensor([v >= tau and v > -math.inf for v in values])
    return kept


def test_reference_filters_follow_the_documented_rules():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 50, generator=gen) * 3
    logits[::5] = logits[::5].round()  # ties
    params = random_params(40, gen)
    z = processed(logits, params)
    assert torch.equal(ref_kept(logits, params), brute_force_kept(z, params))
    edge_logits, edge_params = edge_case_batch()
    z = processed(edge_logits, edge_params)
    kept = ref_kept(edge_logits, edge_params)
    assert torch.equal(kept, brute_force_kept(z, edge_params))
    assert kept[0].sum() == 64 and kept[6].sum() == 64  # top_k >= vocab: disabled
    assert kept[2].all()  # all equal: ties at every boundary are kept
    assert kept[3, :10].all() and kept[3].sum() == 10  # top_k=4 inside a 10-way tie keeps all 10
    assert kept[4].sum() == 1 and kept[4, 17]  # one allowed token, all filters on
    assert kept[7].sum() == 1 and kept[8].sum() == 1  # top_k=1; top_p tiny
    assert kept[9].sum() == 1  # min_p=1 keeps the max only


def test_kernel_kept_set_equals_reference():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(20, 300, generator=gen) * 3
    logits[::4] = (logits[::4] * 2).round() / 2
    params = random_params(20, gen)
    got, _ = kernel_kept(logits, params)
    assert torch.equal(got, ref_kept(logits, params))


def test_kernel_edge_cases_equal_reference():
    logits, params = edge_case_batch()
    got, result = kernel_kept(logits, params)
    assert torch.equal(got, ref_kept(logits, params))
    assert torch.equal(result.token_ids, ref.sample(logits, params).token_ids)
    assert result.token_ids[4] == 17


def test_kernel_fallback_path_equals_fast_path():
    """Tiny candidate capacity forces the full-row bisection; results must not change."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 700, generator=gen) * 2
    params = make_params(8, temperature=0.8, top_k=[0, 50, 200, 0, 5, 0, 100, 0],
                         top_p=[0.9, 1.0, 0.95, 0.5, 1.0, 1.0, 0.7, 0.99],
                         min_p=[0.0, 0.0, 0.0, 0.0, 0.01, 0.001, 0.0, 0.0])
    params.temperature[5] = 0.0
    fast, fast_tau = tri._sample(logits, params, None, 4)
    slow, slow_tau = tri._sample(logits, params, None, 4, cap=16)
    expected = ref.sample(logits, params, None, 4)
    assert torch.equal(fast_tau, slow_tau)
    for result in (fast, slow):
        assert torch.equal(result.token_ids, expected.token_ids)
        assert torch.equal(result.top_ids, expected.top_ids)
        torch.testing.assert_close(result.logprobs, expected.logprobs)
        torch.testing.assert_close(result.top_logprobs, expected.top_logprobs)


def test_kernel_multi_block_rows():
    """Vocabularies past one 4096-token block: histograms merge and candidates span blocks."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 9000, generator=gen)
    logits[0, 100] = logits[0, 8500] = 6.0  # top tokens in different blocks, tied
    logits[1, 4095:4097] = 5.0
    params = make_params(3, temperature=[1.0, 0.0, 1.0], top_k=[2, 0, 30], top_p=[1.0, 1.0, 0.9])
    got, result = kernel_kept(logits, params)
    assert torch.equal(got, ref_kept(logits, params))
    expected = ref.sample(logits, params, None, 3)
    result = tri.sample(logits, params, None, 3)
    assert torch.equal(result.token_ids, expected.token_ids)
    assert torch.equal(result.top_ids, expected.top_ids)
    assert result.token_ids[1] == 4095
    assert result.top_ids[0, :2].tolist() == [100, 8500]


# ----------------------------------------------------------------------------- distribution


def chi_square_critical(dof: int, alpha: float = 1e-6) -> float:
    """Wilson-Hilferty upper quantile of chi-square (z = 4.753 for alpha 1e-6)."""
    z = {1e-6: 4.753}[alpha]
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def draws(impl, logits_row: torch.Tensor, n: int, **columns) -> torch.Tensor:
    params = make_params(n, seed=torch.arange(n) * 104729 + 17, position=torch.arange(n) % 13, **columns)
    return impl.sample(logits_row.expand(n, -1).contiguous(), params).token_ids


def exact_distribution(logits_row: torch.Tensor, **columns) -> torch.Tensor:
    params = make_params(1, **columns)
    z = processed(logits_row[None], params).double()
    kept = ref.kept_mask(z.float(), ref.filter_threshold(z.float(), params))
    return torch.where(kept, torch.softmax(z.masked_fill(~kept, -math.inf), dim=1), 0.0)[0]


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token outside the kept set"
    expected = probs[support] * counts.sum()
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


@pytest.mark.parametrize("columns", [
    dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.02),
    dict(temperature=1.3),
])
def test_reference_draws_follow_the_filtered_distribution(columns):
    logits = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0, 1.5, 0.9])
    n = 20_000
    tokens = draws(ref, logits, n, **columns)
    counts = torch.bincount(tokens, minlength=logits.numel()).double()
    probs = exact_distribution(logits, **columns)
    stat, dof = chi_square(counts, probs)
    assert stat < chi_square_critical(dof), (stat, dof)
    # The test has power: the unfiltered / untempered distribution is rejected outright.
    wrong = torch.softmax(logits.double(), 0)
    wrong_stat = float(((counts - wrong * n) ** 2 / (wrong * n)).sum())
    assert wrong_stat > chi_square_critical(logits.numel() - 1)


def test_kernel_draws_equal_reference_draws():
    logits = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0, 1.5, 0.9])
    for columns in (dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.02), dict(temperature=1.3)):
        expected = draws(ref, logits, 24, **columns)
        assert torch.equal(draws(tri, logits, 24, **columns), expected)
        assert len(set(expected.tolist())) > 3  # the seeds really vary the draw


def test_kernel_tokens_equal_reference_on_mixed_batches():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(32, 500, generator=gen) * 2.5
    params = random_params(32, gen)
    assert torch.equal(tri.sample(logits, params).token_ids, ref.sample(logits, params).token_ids)


# ----------------------------------------------------------------------------- invariance, greedy


@pytest.mark.parametrize("impl", [ref, tri], ids=["reference", "triton"])
def test_seeded_rows_are_batch_invariant(impl):
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 200, generator=gen) * 2
    params = make_params(6, temperature=[0.9, 1.2, 0.0, 0.7, 1.0, 1.5], top_k=[0, 20, 0, 5, 0, 40],
                         top_p=[0.95, 1.0, 1.0, 0.8, 1.0, 0.9], min_p=[0.0, 0.05, 0.0, 0.0, 0.1, 0.0])
    base = impl.sample(logits, params, None, 2)
    # Rows moved, batch shrunk: same tokens and logprobs.
    for rows in ([5, 4, 3, 2, 1, 0], [3], [1, 5]):
        moved = impl.sample(logits[rows], select_rows(params, rows), None, 2)
        assert torch.equal(moved.token_ids, base.token_ids[rows])
        assert torch.equal(moved.logprobs, base.logprobs[rows])
        assert torch.equal(moved.top_logprobs, base.top_logprobs[rows])
    # Batch grown with rows whose logits and parameters differ.
    extra = torch.randn(3, 200, generator=gen) * 5
    grown_logits = torch.cat([extra[:2], logits, extra[2:]])
    other = make_params(3, temperature=[0.0, 2.0, 0.5], top_k=[0, 3, 0], top_p=[1.0, 0.5, 1.0])
    grown = ref.SamplingTensors(**{
        name: torch.cat([getattr(other, name)[:2], getattr(params, name), getattr(other, name)[2:]])
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "seed", "position")})
    result = impl.sample(grown_logits, grown, None, 2)
    assert torch.equal(result.token_ids[2:8], base.token_ids)
    assert torch.equal(result.logprobs[2:8], base.logprobs)
    # A different position (next token of the same request) draws fresh noise.
    later = make_params(6, **{n: getattr(params, n) for n in ("temperature", "top_k", "top_p", "min_p")},
                        position=torch.full((6,), 1))
    flat = torch.zeros(6, 200)
    assert not torch.equal(impl.sample(flat, later).token_ids, impl.sample(flat, params).token_ids)


@pytest.mark.parametrize("impl", [ref, tri], ids=["reference", "triton"])
def test_greedy_rows_are_argmax_in_a_mixed_batch(impl):
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(8, 150, generator=gen)
    logits[0, [3, 70]] = 9.0  # exact tie: lowest index wins
    logits[2, [149, 5]] = 9.0
    params = make_params(8, temperature=[0.0, 1.0, 0.0, 0.8, 0.0, 1.0, 0.0, 0.0], top_k=[3, 3, 0, 0, 1, 0, 0, 50],
                         top_p=[0.5, 0.5, 1.0, 1.0, 1.0, 0.9, 1.0, 1.0])
    tokens = impl.sample(logits, params).token_ids
    greedy = params.temperature == 0
    assert torch.equal(tokens[greedy], logits.argmax(dim=1)[greedy])
    assert tokens[0] == 3 and tokens[2] == 5
    reseeded = make_params(8, **{n: getattr(params, n) for n in ("temperature", "top_k", "top_p")},
                           seed=torch.arange(8) + 999)
    assert torch.equal(impl.sample(logits, reseeded).token_ids[greedy], tokens[greedy])


# ----------------------------------------------------------------------------- penalties


def build_penalty_state(vocab: int, histories) -> ref.PenaltyState:
    state = ref.PenaltyState(len(histories), vocab, "cpu")
    for row, (prompt, output) in enumerate(histories):
        state.reset_row(row, torch.tensor(prompt), torch.tensor(output, dtype=torch.int64))
    return state


def test_penalty_state_incremental_updates_match_a_rebuild():
    vocab = 70
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, vocab, (12,), generator=gen).tolist() for _ in range(4)]
    outputs = [[] for _ in range(4)]
    state = build_penalty_state(vocab, [(p, []) for p in prompts])
    for step in range(6):
        rows = torch.tensor([0, 1, 2, 3, 1])  # row 1 gets two tokens in one call
        tokens = torch.randint(0, vocab, (5,), generator=gen)
        tokens[4] = tokens[1] if step % 2 else (tokens[1] ^ 1)  # same word, same or other bit
        state.add_tokens(rows, tokens)
        for r, t in zip(rows.tolist(), tokens.tolist()):
            outputs[r].append(t)
    rebuilt = build_penalty_state(vocab, list(zip(prompts, outputs)))
    assert torch.equal(state.counts, rebuilt.counts)
    assert torch.equal(state.prompt_mask, rebuilt.prompt_mask)
    assert torch.equal(state.seen_bits, rebuilt.seen_bits)
    for r in range(4):
        expected = torch.zeros(vocab, dtype=torch.int32)
        for t in outputs[r]:
            expected[t] += 1
        assert torch.equal(state.counts[r], expected)
        seen = [(int(state.seen_bits[r, t // 32]) >> (t % 32)) & 1 for t in range(vocab)]
        assert seen == [int(t in prompts[r] or t in outputs[r]) for t in range(vocab)]


def test_penalties_follow_vllm_semantics_and_kernel_matches():
    vocab = 40
    logits = torch.linspace(-3, 3, vocab).repeat(4, 1)
    histories = [([1, 2, 30], [2, 2, 35]), ([], [5]), ([39], []), ([0], [0, 0, 0])]
    state = build_penalty_state(vocab, histories)
    params = make_params(4, temperature=0.0, repetition_penalty=[2.0, 1.0, 1.5, 1.0],
                         presence_penalty=[0.5, 1.0, 0.0, 0.0], frequency_penalty=[0.25, 0.0, 0.0, -0.5],
                         penalty_rows=torch.tensor([0, 1, 2, 3]))
    penalized = ref.penalized_logits(logits, params, state)
    x = logits[0]
    assert penalized[0, 1] == x[1] * 2.0  # prompt only, negative logit: * rep
    assert penalized[0, 30] == x[30] / 2.0  # prompt only, positive: / rep
    assert penalized[0, 2] == x[2] * 2.0 - 0.25 * 2 - 0.5  # prompt and output twice
    assert penalized[0, 35] == x[35] / 2.0 - 0.25 - 0.5
    assert penalized[1, 5] == x[5] - 1.0 and penalized[2, 39] == x[39] / 1.5
    assert penalized[3, 0] == x[0] + 1.5
    untouched = torch.ones(4, vocab, dtype=torch.bool)
    untouched[0, [1, 2, 30, 35]] = untouched[1, 5] = untouched[2, 39] = untouched[3, 0] = False
    assert torch.equal(penalized[untouched], logits[untouched])
    assert ref.sample(logits, params, state).token_ids[2] == 38  # 39 penalized below 38

    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(6, vocab, generator=gen) * 2
    state = build_penalty_state(vocab, [(torch.randint(0, vocab, (8,), generator=gen).tolist(),
                                         torch.randint(0, vocab, (6,), generator=gen).tolist()) for _ in range(6)])
    params = make_params(6, temperature=[0.0, 0.0, 0.8, 1.0, 0.0, 1.2], top_k=[0, 0, 10, 0, 0, 5],
                         repetition_penalty=[1.3, 0.8, 1.1, 1.0, 1.0, 2.0],
                         presence_penalty=[0.0, 0.5, 1.0, 0.0, 0.0, -1.0],
                         frequency_penalty=[0.3, 0.0, 0.2, 0.0, 0.0, 0.5],
                         penalty_rows=torch.tensor([5, 4, -1, 2, 1, 0]))
    assert torch.equal(ref.penalized_logits(logits, params, state)[2], logits[2])  # row -1: no statistics
    got, expected = tri.sample(logits, params, state, 5), ref.sample(logits, params, state, 5)
    assert torch.equal(got.token_ids, expected.token_ids)
    assert torch.equal(got.top_ids, expected.top_ids)  # greedy rows rank the penalized logits
    torch.testing.assert_close(got.top_logprobs, expected.top_logprobs)
    kept, _ = kernel_kept(logits, params, state)
    assert torch.equal(kept, ref_kept(logits, params, state))


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_definition_and_kernel_match():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(6, 16, generator=gen) * 2
    allowed = torch.ones(6, 16, dtype=torch.bool)
    allowed[5, 3:] = False
    bias = torch.zeros(6, 16)
    bias[:, 7] = 3.0
    params = make_params(6, temperature=[0.0, 1.0, 0.7, 0.7, 0.0, 1.0], top_k=[0, 0, 4, 0, 0, 0],
                         top_p=[1.0, 1.0, 1.0, 0.8, 1.0, 1.0], logit_bias=bias, allowed_mask=allowed)
    expected = ref.sample(logits, params, None, 20)
    # Definition: log-softmax of what is sampled from (greedy rows: penalized logits).
    penalized = ref.penalized_logits(logits, params)
    z = processed(logits, params)
    kept = ref.kept_mask(z, ref.filter_threshold(z, params))
    for b in range(6):
        source = penalized[b] if params.temperature[b] == 0 else z[b]
        lp = torch.log_softmax(source.masked_fill(~kept[b], -math.inf).double(), 0).float()
        assert math.isclose(expected.logprobs[b], lp[expected.token_ids[b]], rel_tol=1e-6, abs_tol=1e-6)
        n_kept = int(kept[b].sum())
        assert expected.top_ids[b, n_kept:].eq(-1).all() and expected.top_logprobs[b, n_kept:].eq(-math.inf).all()
        ranked = sorted(range(16), key=lambda t: (-float(source[t]), t))[:n_kept]
        assert expected.top_ids[b, :n_kept].tolist() == ranked
        torch.testing.assert_close(expected.top_logprobs[b, :n_kept], lp[ranked])
    assert int(kept[2].sum()) == 4 and int(kept[5].sum()) == 3
    for n in (None, 0, 3, 20):
        got = tri.sample(logits, params, None, n)
        want = ref.sample(logits, params, None, n)
        assert torch.equal(got.token_ids, want.token_ids)
        if n is None:
            assert got.logprobs is None and got.top_ids is None
            continue
        torch.testing.assert_close(got.logprobs, want.logprobs)
        if n == 0:
            assert got.top_ids is None and got.top_logprobs is None
            continue
        assert got.top_ids.shape == (6, n) and got.top_ids.dtype == torch.int64
        assert torch.equal(got.top_ids, want.top_ids)
        torch.testing.assert_close(got.top_logprobs, want.top_logprobs)


def test_half_precision_logits_are_upcast():
    gen = torch.Generator().manual_seed(14)
    params = make_params(4, temperature=[0.0, 1.0, 0.5, 1.0], top_p=[1.0, 0.9, 1.0, 0.5])
    for dtype in (torch.bfloat16, torch.float16):
        logits = (torch.randn(4, 100, generator=gen) * 3).to(dtype)
        got, want = tri.sample(logits, params, None, 2), ref.sample(logits, params, None, 2)
        assert torch.equal(got.token_ids, want.token_ids)
        assert torch.equal(got.top_ids, want.top_ids)
        torch.testing.assert_close(got.logprobs, want.logprobs)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("change, message", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=math.inf), "presence_penalty"),
    (dict(frequency_penalty=math.nan), "frequency_penalty"),
    (dict(position=-1), "position"),
    (dict(top_k=torch.zeros(3, dtype=torch.int32)), "top_k"),
    (dict(temperature=torch.ones(4, dtype=torch.int32)), "temperature"),
    (dict(allowed_mask=torch.zeros(4, 10, dtype=torch.bool)), "allowed_mask"),
    (dict(allowed_mask=torch.ones(4, 9, dtype=torch.bool)), "allowed_mask"),
    (dict(logit_bias=torch.full((4, 10), math.nan)), "logit_bias"),
    (dict(penalty_rows=torch.zeros(4, dtype=torch.int64)), "PenaltyState"),
])
@pytest.mark.parametrize("impl", [ref, tri], ids=["reference", "triton"])
def test_bad_parameters_are_rejected_before_any_kernel(impl, change, message, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel ran before validation")

    for name in ("_block_stats_kernel", "_summary_kernel", "_compact_kernel", "_finalize_kernel"):
        monkeypatch.setattr(tri, name, NoLaunch())
    scalars = {k: v for k, v in change.items() if not isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in change.items() if isinstance(v, torch.Tensor)}
    params = dataclasses.replace(make_params(4, **scalars), **tensors)
    with pytest.raises(KernelInputError, match=message):
        impl.sample(torch.zeros(4, 10), params)


def test_bad_call_arguments_are_rejected():
    params = make_params(2)
    for impl in (ref, tri):
        with pytest.raises(KernelInputError, match="num_logprobs"):
            impl.sample(torch.zeros(2, 10), params, None, 21)
        with pytest.raises(KernelInputError, match="logits"):
            impl.sample(torch.zeros(2, 10, dtype=torch.int64), params)
        state = ref.PenaltyState(2, 11, "cpu")
        with pytest.raises(KernelInputError, match="vocab"):
            impl.sample(torch.zeros(2, 10), make_params(2, penalty_rows=torch.zeros(2, dtype=torch.int64)), state)
        rows = make_params(2, penalty_rows=torch.tensor([0, 5]))
        with pytest.raises(KernelInputError, match="penalty_rows"):
            impl.sample(torch.zeros(2, 10), rows, ref.PenaltyState(2, 10, "cpu"))


def test_dispatch_helper_and_shared_types():
    assert tri.triton_available("cpu")  # the tests run under TRITON_INTERPRET=1 without CUDA
    assert tri.SamplingTensors is ref.SamplingTensors and tri.PenaltyState is ref.PenaltyState
    assert tri.SampleResult is ref.SampleResult
    empty = tri.sample(torch.zeros(0, 10), make_params(0), None, 2)
    assert empty.token_ids.shape == (0,) and empty.top_ids.shape == (0, 2)


# ----------------------------------------------------------------------------- GPU only

needs_cuda = pytest.mark.cuda  # run by scripts/gpu_check.sh; skipped without CUDA (tests/conftest.py)


def to_device(params: ref.SamplingTensors, device) -> ref.SamplingTensors:
    fields = {name: getattr(params, name) for name in params.__dataclass_fields__}
    return ref.SamplingTensors(**{k: (v.to(device) if v is not None else None) for k, v in fields.items()})


def gpu_batch(batch: int, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, vocab, generator=gen) * 3).cuda()
    params = random_params(batch, gen)
    params.repetition_penalty[::2] = 1.2
    params.frequency_penalty[1::3] = 0.3
    params.presence_penalty[::5] = 0.2
    params.penalty_rows = torch.arange(batch)
    state = ref.PenaltyState(batch, vocab, "cuda")
    for row in range(batch):
        history = torch.randint(0, vocab, (300,), generator=gen)
        state.reset_row(row, history[:200], history[200:])
    return logits, to_device(params, "cuda"), state


def ambiguous_top_p(z: torch.Tensor, params: ref.SamplingTensors, slack: float = 1e-4) -> torch.Tensor:
    """Tokens whose top-p membership turns on float rounding: the mass above them is within
    ``slack`` of top_p (with 150k tokens in the nucleus, float32 sums cannot settle these)."""
    p = torch.softmax(z.double(), dim=1)
    order = torch.sort(z, dim=1, descending=True, stable=True).indices
    above = torch.cumsum(p.gather(1, order), dim=1) - p.gather(1, order)
    near = (above - params.top_p.double()[:, None]).abs() < slack
    ambiguous = torch.zeros_like(near).scatter_(1, order, near)
    return ambiguous & (params.top_p < 1)[:, None] & (params.temperature > 0)[:, None]


@needs_cuda
def test_gpu_large_vocabulary_matches_reference():
    logits, params, state = gpu_batch(64, 151936, seed=15)
    result, tau = tri._sample(logits, params, state, 5)
    expected = ref.sample(logits, params, state, 5)
    z = processed(logits, params, state)
    differ = ref.kept_mask(z, tau) ^ ref.kept_mask(z, ref.filter_threshold(z, params))
    assert not (differ & ~ambiguous_top_p(z, params)).any()
    assert torch.equal(result.token_ids, expected.token_ids)
    assert torch.equal(result.top_ids, expected.top_ids)
    torch.testing.assert_close(result.top_logprobs, expected.top_logprobs)


@needs_cuda
def test_gpu_cuda_graph_replay_matches_eager():
    logits, params, state = gpu_batch(16, 32000, seed=16)
    eager = tri.sample(logits, params, state, 3, validate=False)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        tri.sample(logits, params, state, 3, validate=False)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = tri.sample(logits, params, state, 3, validate=False)
    graph.replay()
    assert torch.equal(captured.token_ids, eager.token_ids)
    assert torch.equal(captured.logprobs, eager.logprobs)
    params.position += 1  # next step: new noise, same graph
    logits.mul_(0.5)
    graph.replay()
    assert torch.equal(captured.token_ids, tri.sample(logits, params, state, 3).token_ids)
