"""SamplingParams.prompt_logprobs (worker/prompt_logprobs.py) against transformers' log_softmax."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from bare_engine import LLM, SamplingParams
from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def reference(model_dir):
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

    def logprobs(ids):
        with torch.no_grad():
            return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    return logprobs


def check(entries, ids, ref, top):
    assert len(entries) == len(ids) and entries[0] is None
    for i in range(1, len(ids)):
        entry = entries[i]
        assert abs(entry[ids[i]] - ref[i - 1, ids[i]].item()) < 1e-4
        best = ref[i - 1].topk(top).indices.tolist() if top else []
        assert set(entry) == set(best) | {ids[i]}
        for token in best:
            assert abs(entry[token] - ref[i - 1, token].item()) < 1e-4


@pytest.mark.parametrize("chunk", [8, 256])  # chunked prefill and whole prompts
def test_prompt_logprobs_match_transformers(model_dir, reference, chunk):
    llm = LLM(model_dir, block_size=4, max_model_len=128, num_kv_blocks=128, max_num_batched_tokens=chunk)
    prompts = [list(range(5, 40)), [7, 3, 9], [11]]
    params = [SamplingParams(prompt_logprobs=k, max_tokens=3, temperature=0.0) for k in (2, 0, 1)]
    for out, ids, p in zip(llm.generate(prompts, params, use_tqdm=False), prompts, params):
        check(out.prompt_logprobs, ids, reference(ids), p.prompt_logprobs)
        assert out.num_cached_tokens == 0


def test_prompt_logprobs_skip_the_prefix_cache_and_survive_preemption(model_dir, reference):
    llm = LLM(model_dir, block_size=4, max_model_len=64, num_kv_blocks=24, max_num_seqs=4)
    shared = list(range(20, 44))
    plain = llm.generate([shared], SamplingParams(max_tokens=2), use_tqdm=False)[0]
    again = llm.generate([shared], SamplingParams(max_tokens=2), use_tqdm=False)[0]
    assert plain.num_cached_tokens == 0 and again.num_cached_tokens > 0
    prompts = [shared + [i] for i in range(4)]
    params = SamplingParams(prompt_logprobs=1, max_tokens=30, ignore_eos=True, temperature=1.0, seed=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    for out, ids in zip(outs, prompts):
        assert out.num_cached_tokens == 0
        check(out.prompt_logprobs, ids, reference(ids), 1)


def test_prompt_logprobs_are_validated():
    with pytest.raises(InvalidSamplingParamsError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
