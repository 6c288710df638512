"""The CPU's linear through oneDNN's prepacked weights: F.linear's values for any number of rows, and a
sampler that gives the same tokens and logprobs from a transposed view of the logits as from contiguous ones."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bare_engine.engine.sequence import Sequence
from bare_engine.model.layers.linear import PACK_BATCH_HINT, ColumnParallelLinear, Piece, linear, pack_weight
from bare_engine.sample.sampler import Sampler
from bare_engine.sampling_params import SamplingParams


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows, bias", [(1, False), (7, True), (PACK_BATCH_HINT, True), (300, False)])
def test_packed_linear_matches_f_linear(rows, bias, dtype, tol):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 48, generator=gen).to(dtype)
    w = torch.randn(96, 48, generator=gen).to(dtype)
    b = torch.randn(96, generator=gen).to(dtype) if bias else None
    packed = pack_weight(w)
    assert packed is not None
    y = linear(x, w, b, packed)
    assert y.dtype == dtype and y.shape == (rows, 96) and y.is_contiguous()
    want = F.linear(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * 10)


def test_unpacked_and_three_dimensional_inputs_use_f_linear():
    x, w = torch.randn(2, 3, 8), torch.randn(5, 8)
    assert torch.equal(linear(x, w, packed=pack_weight(w)), F.linear(x, w))
    assert torch.equal(linear(x[0], w), F.linear(x[0], w))


def test_pack_weight_skips_what_onednn_does_not_pack():
    assert pack_weight(torch.randn(4, 8, dtype=torch.float16)) is None


def test_a_layer_packs_its_loaded_weight():
    layer = ColumnParallelLinear(8, [Piece.whole(6)])
    layer.weight.data.copy_(torch.randn(6, 8))
    x = torch.randn(3, 8)
    before = layer(x)
    layer.pack()
    assert layer.packed is not None
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


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
    logits = torch.randn(vocab, rows, generator=torch.Generator().manual_seed(0)).t()
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
