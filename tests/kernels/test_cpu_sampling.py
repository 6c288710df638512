"""The CPU sampler (kernels/sampling_cpu.py): the torch reference with native Philox bits
(kernels/cpu_philox.c) draws the reference's tokens."""

import pytest
import torch
from bare_engine.kernels import sampling_cpu
from bare_engine.kernels import sampling_ref as ref

pytestmark = pytest.mark.skipif(not sampling_cpu.available(), reason="no C compiler")


def test_native_philox_bits_equal_the_reference():
    """kernels/cpu_philox.c (the CPU sampler's bits) is sampling_ref.row_random_bits, integer for integer."""
    seed = torch.tensor([0, 1, (1 << 63) - 1, 0x1234_5678_9ABC_DEF0, 42])
    position = torch.tensor([0, 7, 1 << 20, 3, (1 << 32) - 1])
    for vocab in (1, 5, 999, 4096):
        assert torch.equal(sampling_cpu.row_random_bits(seed, position, vocab), ref.row_random_bits(seed, position, vocab))


def test_cpu_sampler_draws_the_reference_tokens():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 700, generator=gen) * 4
    params = ref.SamplingTensors(
        temperature=torch.tensor([0.0, 0.7, 1.0, 1.3, 0.7, 1.0]), top_p=torch.tensor([1.0, 1.0, 0.9, 1.0, 0.5, 1.0]),
        top_k=torch.tensor([-1, -1, -1, 20, -1, 3], dtype=torch.int32), min_p=torch.zeros(6),
        repetition_penalty=torch.ones(6), presence_penalty=torch.zeros(6), frequency_penalty=torch.zeros(6),
        seed=torch.arange(6) * 1000 + 5, position=torch.arange(6) + 9)
    expected = ref.sample(logits, params, num_logprobs=2)
    got = sampling_cpu.sample(logits, params, num_logprobs=2)
    assert torch.equal(got.token_ids, expected.token_ids) and torch.equal(got.top_ids, expected.top_ids)
