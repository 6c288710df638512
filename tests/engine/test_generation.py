"""Request semantics: stop strings and tokens, EOS, seeds, n, logprobs, detokenization."""

import pytest

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.engine.detokenizer import Detokenizer
from bare_engine.testing import make_model_dir, make_tokenizer

PROMPTS = [[1, 40, 41, 42], [1, 100, 7], [1, 5, 6, 7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM(make_model_dir(tmp_path_factory.mktemp("m"), "llama"))


def greedy(max_tokens=24, **kw):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def spanning_stop_string(tok, token_ids):
    """A 3-character string that starts in one token's text and ends in a later token's, with the
    index of the token that completes it (random models emit broken UTF-8, so skip those spans)."""
    pieces = [tok.decode(token_ids[: i + 1]) for i in range(len(token_ids))]
    for i in range(1, len(pieces)):
        boundary = len(pieces[i - 1])
        stop = pieces[-1][boundary - 1: boundary + 2]
        done = next((j for j in range(i, len(pieces)) if len(pieces[j]) >= boundary + 2), None)
        if (done is not None and boundary >= 1 and len(stop) == 3 and "\ufffd" not in pieces[done]
                and pieces[-1].find(stop) == boundary - 1):
            return stop, boundary - 1, done
    raise AssertionError("no clean token boundary in the sample output")


def test_stop_string_spanning_tokens(llm):
    tok = llm.engine.tokenizer()
    for prompt in PROMPTS:
        full = llm.generate([prompt], greedy(), use_tqdm=False)[0].outputs[0]
        try:
            stop, start, done = spanning_stop_string(tok, full.token_ids)
            break
        except AssertionError:
            continue
    out = llm.generate([prompt], greedy(stop=[stop]), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full.text[:start]
    assert out.token_ids == full.token_ids[: done + 1]
    kept = llm.generate([prompt], greedy(stop=stop, include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == full.text[: start + len(stop)]


def test_stop_token_ids_and_eos(llm):
    full = llm.generate(PROMPTS[:1], greedy(), use_tqdm=False)[0].outputs[0]
    stop_token = full.token_ids[6]
    first = full.token_ids.index(stop_token)
    out = llm.generate(PROMPTS[:1], greedy(stop_token_ids=[stop_token]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == full.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_token
    # Treat that token as EOS: generation ends there unless ignore_eos.
    llm.engine.eos_ids["default"].add(stop_token)
    try:
        eos = llm.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)[0].outputs[0]
        assert eos.token_ids == full.token_ids[: first + 1] and eos.finish_reason == "stop"
        assert eos.stop_reason is None
        ignored = llm.generate(PROMPTS[:1], greedy(), use_tqdm=False)[0].outputs[0]
        assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"
    finally:
        llm.engine.eos_ids["default"].discard(stop_token)


def test_text_equals_tokenizer_decode(llm):
    for out in llm.generate(PROMPTS, greedy(), use_tqdm=False):
        tok = llm.engine.tokenizer()
        assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_batch_invariant(llm):
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_tokens=16, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPTS[1:2], params, use_tqdm=False)[0].outputs[0].token_ids
    mixed_params = [SamplingParams(temperature=1.3, max_tokens=9, seed=7), params, greedy()]
    mixed = llm.generate(PROMPTS, mixed_params, use_tqdm=False)[1].outputs[0].token_ids
    assert alone == mixed
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_tokens=16, seed=99, ignore_eos=True)
    assert llm.generate(PROMPTS[1:2], other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_unseeded_requests_follow_the_engine_seed(tmp_path):
    model_dir = make_model_dir(tmp_path / "m", "llama")
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    runs = [LLM(model_dir, seed=s).generate(PROMPTS, params, use_tqdm=False) for s in (0, 0, 1)]
    tokens = [[o.outputs[0].token_ids for o in run] for run in runs]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]


def test_n_samples_are_distinct_and_indexed(llm):
    out = llm.generate(PROMPTS[:1], SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=5, ignore_eos=True),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 4
    single = llm.generate(PROMPTS[:1], SamplingParams(temperature=1.0, max_tokens=12, seed=5, ignore_eos=True),
                          use_tqdm=False)[0]
    assert out.outputs[0].token_ids == single.outputs[0].token_ids


def test_logprobs_of_greedy_tokens(llm):
    out = llm.generate(PROMPTS[:1], greedy(max_tokens=6, logprobs=3), use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 6
    for token, entry in zip(out.token_ids, out.logprobs):
        assert token in entry and len(entry) >= 3
        assert entry[token] == pytest.approx(max(entry.values()))  # greedy picks the most likely
        assert all(lp <= 0.0 for lp in entry.values())
    assert out.cumulative_logprob == pytest.approx(sum(e[t] for t, e in zip(out.token_ids, out.logprobs)))


def test_max_model_len_ends_generation(tmp_path):
    llm = LLM(make_model_dir(tmp_path / "m", "llama"), max_model_len=16)
    out = llm.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


def test_two_engines_coexist_in_one_process(tmp_path):
    a = LLMEngine(make_model_dir(tmp_path / "a", "llama", seed=1), EngineConfig(num_kv_blocks=64))
    b = LLMEngine(make_model_dir(tmp_path / "b", "qwen2", seed=2), EngineConfig(num_kv_blocks=40, block_size=32))
    for engine in (a, b):
        engine.add_request("same-id", [1, 5, 6], greedy(max_tokens=5))
    outs = {}
    while a.has_unfinished_requests() or b.has_unfinished_requests():
        for name, engine in (("a", a), ("b", b)):
            for out in engine.step():
                outs[name] = out
    assert len(outs["a"].outputs[0].token_ids) == len(outs["b"].outputs[0].token_ids) == 5
    assert a.scheduler.pools["default"].num_blocks == 64 and b.scheduler.pools["default"].num_blocks == 40


def test_detokenizer_holds_back_partial_characters():
    tok = make_tokenizer()
    ids = tok.encode("caf\u00e9 \u2603 ok", add_special_tokens=False)
    detok = Detokenizer(tok, stop_strings=["\u2603"])
    stops = [detok.add(t) for t in ids]
    assert "\ufffd" not in detok.text
    assert stops.count("\u2603") == 1
    assert detok.final_text("\u2603", include_stop=False) == "caf\u00e9 "


def test_triton_sampler_in_the_engine_equals_torch_sampler(tmp_path):
    model_dir = make_model_dir(tmp_path / "m", "llama")
    params = [
        SamplingParams(temperature=0.8, top_k=30, top_p=0.9, min_p=0.02, repetition_penalty=1.3,
                       presence_penalty=0.4, frequency_penalty=0.2, max_tokens=5, seed=11, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=1.0, max_tokens=5, seed=12, allowed_token_ids=[40, 41, 42, 43], ignore_eos=True),
    ]
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(model_dir, sampler_backend=backend)
        assert llm.engine.runners["default"].sampler.use_triton == (backend == "triton")
        outs[backend] = llm.generate(PROMPTS, params, use_tqdm=False)
    for a, b in zip(outs["torch"], outs["triton"]):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for ea, eb in zip(a.outputs[0].logprobs or [], b.outputs[0].logprobs or []):
            assert ea.keys() == eb.keys()
            assert all(abs(ea[t] - eb[t]) < 1e-4 for t in ea)
    assert set(outs["torch"][2].outputs[0].token_ids) <= {40, 41, 42, 43}


def test_output_constrained_to_token_sequences(llm):
    labels = [[40, 41, 42], [40, 43], [50]]
    params = SamplingParams(temperature=1.0, max_tokens=10, seed=3, allowed_token_sequences=labels, logprobs=0)
    for out in llm.generate([PROMPTS[0]] * 3, params, use_tqdm=False):
        completion = out.outputs[0]
        assert completion.token_ids in labels and completion.finish_reason == "stop"
    seen = set()
    for seed in range(12):
        p = SamplingParams(temperature=1.0, max_tokens=10, seed=seed, allowed_token_sequences=labels, logprobs=0)
        out = llm.generate([PROMPTS[1]], p, use_tqdm=False)[0].outputs[0]
        assert out.token_ids in labels
        seen.add(tuple(out.token_ids))
        # Logprobs are those of the constrained distribution: a label's probability is their sum.
        assert out.cumulative_logprob <= 0.0
    assert len(seen) >= 2


def test_label_that_prefixes_another_ends_with_eos(llm):
    eos = llm.engine.tokenizer().eos_token_id
    labels = [[40], [40, 41]]
    for seed in range(6):
        p = SamplingParams(temperature=1.0, max_tokens=10, seed=seed, allowed_token_sequences=labels)
        out = llm.generate([PROMPTS[2]], p, use_tqdm=False)[0].outputs[0]
        assert out.token_ids in ([40, eos], [40, 41])


def test_constraint_tokens_outside_vocab_rejected(llm):
    from bare_engine.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="allowed_token_sequences token id 99999"):
        llm.generate([PROMPTS[0]], SamplingParams(allowed_token_sequences=[[99999]]), use_tqdm=False)
