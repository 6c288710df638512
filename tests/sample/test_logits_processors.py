"""Logits processors and sampling steps through the engine: order, seeds, isolation of failures."""

from __future__ import annotations

import math

import pytest
import torch

from bare_engine import LLM, SamplingParams
from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.testing import make_model_dir

PROMPTS = [[1, 40, 41, 42], [1, 100, 7], [1, 5, 6, 7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, max_num_seqs=8)


def sampled(max_tokens=8, seed=3, **kw):
    return SamplingParams(**{"temperature": 1.0, **kw}, max_tokens=max_tokens, ignore_eos=True, seed=seed)


def ban(token):
    def processor(output_token_ids, logits):
        logits[token] = -math.inf
        return logits
    return processor


def generate(llm, prompts, params):
    return [out.outputs[0] for out in llm.generate(prompts, params, use_tqdm=False)]


def test_a_banned_token_never_appears(llm):
    greedy = generate(llm, PROMPTS, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    favourite = max(set(t for c in greedy for t in c.token_ids), key=lambda t: sum(c.token_ids.count(t) for c in greedy))
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logits_processors=[ban(favourite)])
    banned = generate(llm, PROMPTS, params)
    assert all(favourite not in c.token_ids for c in banned)
    assert any(a.token_ids != b.token_ids for a, b in zip(greedy, banned))
    for seed in range(4):
        assert all(favourite not in c.token_ids for c in generate(llm, PROMPTS, sampled(12, seed, logits_processors=[ban(favourite)])))


def test_a_forced_token_always_appears_with_the_prompt_form(llm):
    def force_first_prompt_token(prompt_token_ids, output_token_ids, logits):
        forced = torch.full_like(logits, -math.inf)
        forced[prompt_token_ids[-1]] = 0.0
        return forced

    outs = generate(llm, PROMPTS, sampled(6, logits_processors=[force_first_prompt_token], repetition_penalty=1.5,
                                          top_k=3, logprobs=1))
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == [prompt[-1]] * 6
        assert all(abs(step[prompt[-1]]) < 1e-6 for step in out.logprobs)  # probability 1


def test_a_processor_sees_the_output_grow_step_by_step(llm):
    seen = []

    def record(output_token_ids, logits):
        seen.append(list(output_token_ids))
        return logits

    out = generate(llm, PROMPTS[:1], sampled(5, logits_processors=[record]))[0]
    assert seen == [out.token_ids[:i] for i in range(5)]


def test_processors_run_on_raw_logits_before_penalties_and_temperature(llm):
    captured = []

    def capture(output_token_ids, logits):
        captured.append(logits.clone())
        return logits

    params = dict(max_tokens=1, ignore_eos=True, seed=1)
    generate(llm, PROMPTS[:1], SamplingParams(temperature=1.0, logits_processors=[capture], **params))
    generate(llm, PROMPTS[:1], SamplingParams(temperature=0.3, repetition_penalty=1.8, logit_bias={5: 4.0},
                                              logits_processors=[capture], **params))
    assert torch.equal(captured[0], captured[1])


def test_a_seeded_request_with_a_processor_is_the_same_alone_and_in_a_mixed_batch(llm):
    target = sampled(8, seed=11, logits_processors=[ban(40)], top_p=0.9)
    alone = generate(llm, PROMPTS[:1], target)[0]
    others = [
        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
        sampled(10, seed=5, repetition_penalty=1.3, logprobs=2),
        sampled(7, seed=6, sampling_steps={"top_n_sigma": 1.0}),
        sampled(9, seed=7, logits_processors=[ban(41)]),
    ]
    batch = generate(llm, [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1], PROMPTS[2]], [target] + others)
    assert batch[0].token_ids == alone.token_ids
    assert 40 not in alone.token_ids and 41 not in batch[4].token_ids


def test_a_failing_processor_fails_only_its_request(llm):
    def explode_at_third_token(output_token_ids, logits):
        if len(output_token_ids) == 2:
            raise ValueError("no third token for you")
        return logits

    def wrong_shape(output_token_ids, logits):
        return logits[:10]

    healthy = [sampled(6, seed=1), SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)]
    expected = generate(llm, PROMPTS[:2], healthy)
    params = healthy + [sampled(6, logits_processors=[explode_at_third_token]), sampled(6, logits_processors=[wrong_shape])]
    outs = generate(llm, PROMPTS[:2] + PROMPTS[1:3], params)
    assert [o.token_ids for o in outs[:2]] == [e.token_ids for e in expected]
    assert [o.finish_reason for o in outs] == ["length", "length", "error", "error"]
    assert outs[0].error is None and len(outs[2].token_ids) == 2 and outs[3].token_ids == []
    assert "explode_at_third_token failed at output token 2: ValueError: no third token for you" in outs[2].error
    assert "wrong_shape failed at output token 0: returned shape (10,), expected" in outs[3].error


def test_processors_named_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_processors.py").write_text(
        "def ban_five(output_token_ids, logits):\n    logits[5] = float('-inf')\n    return logits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    params = SamplingParams(logits_processors=["my_processors:ban_five"])
    assert params.logits_processors[0].__name__ == "ban_five"
    with pytest.raises(InvalidSamplingParamsError, match="has no attribute nope"):
        SamplingParams(logits_processors=["my_processors:nope"])
    with pytest.raises(InvalidSamplingParamsError, match="takes 1 arguments"):
        SamplingParams(logits_processors=[lambda logits: logits])


def test_top_n_sigma_from_generate(llm):
    greedy = generate(llm, PROMPTS, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    # n = 0 keeps only the maximum: sampling at any temperature is then greedy
    zero = generate(llm, PROMPTS, sampled(6, sampling_steps={"top_n_sigma": 0.0}, temperature=1.7))
    assert [c.token_ids for c in zero] == [c.token_ids for c in greedy]
    wide = generate(llm, PROMPTS, sampled(6, sampling_steps={"top_n_sigma": 50.0}))
    assert [c.token_ids for c in wide] == [c.token_ids for c in generate(llm, PROMPTS, sampled(6))]


def test_top_n_sigma_triton_sampler_equals_torch_sampler(model_dir):
    params = [sampled(4, seed=9, sampling_steps={"top_n_sigma": 1.0}, logprobs=2, repetition_penalty=1.2),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, sampling_steps={"top_n_sigma": 1.0})]
    outs = {}
    for backend in ("torch", "triton"):
        outs[backend] = generate(LLM(model_dir, sampler_backend=backend), PROMPTS[:2], params)
    for a, b in zip(outs["torch"], outs["triton"]):
        assert a.token_ids == b.token_ids
        for ea, eb in zip(a.logprobs or [], b.logprobs or []):
            assert ea.keys() == eb.keys() and all(abs(ea[t] - eb[t]) < 1e-4 for t in ea)
