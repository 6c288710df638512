"""The CPU sampler (kernels/sampling_cpu.py): the torch reference with its random draw in native
code (kernels/cpu_sampling.c) draws the reference's tokens."""

import math

import pytest
import torch
from bare_engine.kernels import sampling_cpu
from bare_engine.kernels import sampling_ref as ref

pytestmark = pytest.mark.skipif(not sampling_cpu.available(), reason="no C compiler")


def tensors(rows: int, **columns) -> ref.SamplingTensors:
    defaults = dict(temperature=torch.full((rows,), 0.8), top_p=torch.ones(rows), top_k=torch.full((rows,), -1, dtype=torch.int32),
                    min_p=torch.zeros(rows), repetition_penalty=torch.ones(rows), presence_penalty=torch.zeros(rows),
                    frequency_penalty=torch.zeros(rows), seed=torch.arange(rows) * 7919 + 3, position=torch.arange(rows) + 11)
    return ref.SamplingTensors(**{**defaults, **columns})


def test_native_draw_equals_the_reference_over_many_seeds():
    """Every (seed, position) draws the reference's token: a single wrong Philox word or Gumbel score
    would change the argmax of some of these 400 rows. Dense rows (every token kept), filtered
    rows (top-k, top-p, -inf logits) and greedy rows among them."""
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 400, 1003  # a vocabulary that is not a multiple of 4 nor of the kernel's chunk
    logits = torch.randn(rows, vocab, generator=gen) * 3
    logits[::7, : vocab // 2] = -math.inf
    params = tensors(rows, temperature=torch.where(torch.arange(rows) % 11 == 0, 0.0, 0.8),
                     seed=torch.randint(0, 2**62, (rows,), generator=gen),
                     position=torch.randint(0, 2**31, (rows,), generator=gen),
                     top_k=torch.where(torch.arange(rows) % 3 == 0, 5, -1).int(),
                     top_p=torch.where(torch.arange(rows) % 5 == 0, 0.7, 1.0))
    expected = ref.sample(logits, params)
    got = sampling_cpu.sample(logits, params)
    assert torch.equal(got.token_ids, expected.token_ids)
    assert len(set(got.token_ids.tolist())) > 100  # really random, not one fixed token


def test_cpu_sampler_draws_the_reference_tokens_and_logprobs():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 700, generator=gen) * 4
    params = tensors(6, temperature=torch.tensor([0.0, 0.7, 1.0, 1.3, 0.7, 1.0]),
                     top_p=torch.tensor([1.0, 1.0, 0.9, 1.0, 0.5, 1.0]),
                     top_k=torch.tensor([-1, -1, -1, 20, -1, 3], dtype=torch.int32),
                     seed=torch.arange(6) * 1000 + 5, position=torch.arange(6) + 9)
    expected = ref.sample(logits, params, num_logprobs=2)
    got = sampling_cpu.sample(logits, params, num_logprobs=2)
    assert torch.equal(got.token_ids, expected.token_ids) and torch.equal(got.top_ids, expected.top_ids)
    assert torch.equal(got.logprobs, expected.logprobs)


def test_a_row_draws_the_same_token_whatever_its_batch():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(9, 4096, generator=gen)
    params = tensors(9)
    batch = sampling_cpu.sample(logits, params).token_ids
    for r in (0, 4, 8):
        alone = sampling_cpu.sample(logits[r:r + 1], tensors(1, seed=params.seed[r:r + 1], position=params.position[r:r + 1]))
        assert alone.token_ids.item() == batch[r].item()


def test_top_k_thresholds_equal_the_reference():
    """Rows bounded by top_k take their thresholds from torch.topk; with top_p, min_p, -inf logits,
    ties, and rows that must take the reference (top_k above the finite tokens, top_p or min_p alone)."""
    gen = torch.Generator().manual_seed(11)
    rows, vocab = 240, 3000
    logits = torch.randn(rows, vocab, generator=gen) * 2
    logits[::5, 100:] = -math.inf  # 100 finite tokens: top_k 300 rows among these take the reference
    logits[1::7] = logits[1::7].round()  # many ties at the boundaries
    r = torch.arange(rows)
    params = tensors(rows, top_k=torch.tensor([1, 5, 50, 300, -1, 2999])[r % 6].int(),
                     top_p=torch.tensor([1.0, 0.9, 0.5, 0.99])[r % 4], min_p=torch.where(r % 9 == 0, 0.05, 0.0),
                     temperature=torch.where(r % 13 == 0, 0.0, 0.9))
    z = ref.scaled_logits(logits, params)
    assert torch.equal(sampling_cpu.filter_threshold(z, params), ref.filter_threshold(z, params))
    assert torch.equal(sampling_cpu.sample(logits, params).token_ids, ref.sample(logits, params).token_ids)
