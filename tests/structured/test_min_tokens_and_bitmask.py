"""min_tokens (vLLM's: no EOS or stop token id before it) and the grammar bitmask's unpacking."""

import pytest
import torch

from bare_engine import LLM, SamplingParams
from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.structured.bitmask import unpack_bitmask
from bare_engine.testing import make_model_dir

ENGINE = dict(block_size=4, max_model_len=128, num_kv_blocks=256, max_num_seqs=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("llama"), "llama")


@pytest.mark.parametrize("overlapped", [False, True])
def test_min_tokens_holds_back_eos_and_stop_ids(model_dir, overlapped):
    llm = LLM(model_dir, async_scheduling=overlapped, **ENGINE)
    eos = llm.get_tokenizer().eos_token_id
    stop_id = 300
    favour = {eos: 60.0}  # sampled first without min_tokens
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, logit_bias=favour),
        SamplingParams(temperature=0.0, max_tokens=20, logit_bias=favour, min_tokens=5),
        SamplingParams(temperature=1.0, seed=3, max_tokens=20, logit_bias=favour, min_tokens=7),
        SamplingParams(temperature=0.0, max_tokens=20, logit_bias={stop_id: 60.0}, stop_token_ids=[stop_id],
                       min_tokens=4),
    ]
    outs = [o.outputs[0] for o in llm.generate(["hello"] * len(params), params, use_tqdm=False)]
    assert outs[0].token_ids == [eos] and outs[0].finish_reason == "stop"
    for out, (last, n) in zip(outs[1:], [(eos, 5), (eos, 7), (stop_id, 4)]):
        assert out.finish_reason == "stop"
        assert len(out.token_ids) == n + 1 and out.token_ids[-1] == last
        assert last not in out.token_ids[:-1]
    assert outs[3].stop_reason == stop_id


def test_min_tokens_is_validated():
    with pytest.raises(InvalidSamplingParamsError, match="min_tokens"):
        SamplingParams(min_tokens=-1)
    with pytest.raises(InvalidSamplingParamsError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)


@pytest.mark.parametrize("vocab", [64, 100, 130])
def test_unpack_bitmask_matches_bitwise_reading(vocab):
    torch.manual_seed(vocab)
    words = 4  # 128 bits: a vocab of 130 is wider than the bitmask (the extra ids are never allowed)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, words), dtype=torch.int32)
    expected = torch.zeros(3, vocab, dtype=torch.bool)
    for row in range(3):
        for token in range(min(vocab, 32 * words)):
            expected[row, token] = bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)
    assert torch.equal(unpack_bitmask(bitmask, vocab), expected)
