"""The CPU's linear in sgemm's other orientation: F.linear's values, a transposed view for short inputs,
and a sampler that gives the same tokens and logprobs from such a view as from contiguous logits."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bare_engine.engine.sequence import Sequence
from bare_engine.model.layers.linear import CPU_SHORT_ROWS, CPU_WIDE_OUTPUT, linear
from bare_engine.sample.sampler import Sampler
from bare_engine.sampling_params import SamplingParams


@pytest.mark.parametrize("rows, out_features, bias", [
    (1, 96, False), (CPU_SHORT_ROWS, 96, True), (CPU_SHORT_ROWS + 1, 96, True), (300, CPU_WIDE_OUTPUT, False),
])
def test_linear_matches_f_linear(rows, out_features, bias):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 48, generator=gen)
    w = torch.randn(out_features, 48, generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    y = linear(x, w, b)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    transposed = rows <= CPU_SHORT_ROWS or out_features >= CPU_WIDE_OUTPUT
    if rows > 1:  # the (W @ x.T).T view, or F.linear's rows
        assert (y.stride(0) == 1) == transposed


def test_three_dimensional_inputs_use_f_linear():
    x, w = torch.randn(2, 3, 8), torch.randn(5, 8)
    assert torch.equal(linear(x, w), F.linear(x, w))


def _seqs(params_list):
    seqs = []
    for i, params in enumerate(params_list):
        params.validate()
        seqs.append(Sequence(i, f"r{i}", 0, "m", [5, 6, 7], params, seed=1000 + i, arrival=i))
    return seqs


def _mixed_params():
    return [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, logprobs=3),
            SamplingParams(temperature=0.9, top_p=0.9, seed=1), SamplingParams(temperature=1.1, top_k=20, seed=2),
            SamplingParams(temperature=0.7, presence_penalty=0.5, seed=3, logprobs=2),
            SamplingParams(temperature=0.0, logit_bias={4: 50.0})]


def test_sampler_gives_the_same_tokens_from_a_transposed_view():
    vocab, rows = 300, 6
    logits = torch.randn(vocab, rows, generator=torch.Generator().manual_seed(0)).t()  # as linear returns it
    assert not logits.is_contiguous()
    results = []
    for view in (logits, logits.contiguous()):
        sampler = Sampler(vocab, rows, torch.device("cpu"))
        seqs = _seqs(_mixed_params())
        for row, seq in enumerate(seqs):
            sampler.add_row(row, seq)
        results.append(sampler.sample(view, seqs, np.arange(rows), np.full(rows, 4)).to_host())
    assert results[0].token_ids == results[1].token_ids
    assert results[0].token_ids[5] == 4  # the bias row
    assert results[0].logprobs == results[1].logprobs


def test_greedy_rows_take_argmax_of_a_transposed_view():
    vocab, rows = 200, 4
    logits = torch.randn(vocab, rows, generator=torch.Generator().manual_seed(1)).t()
    sampler = Sampler(vocab, rows, torch.device("cpu"))
    seqs = _seqs([SamplingParams(temperature=0.0) for _ in range(rows)])
    for row, seq in enumerate(seqs):
        sampler.add_row(row, seq)
    out = sampler.sample(logits, seqs, np.arange(rows), np.full(rows, 4)).to_host()
    assert out.token_ids == logits.contiguous().argmax(dim=-1).tolist()
