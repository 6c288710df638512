"""vLLM's conventions in LLM: prompt dicts, chat, generation_config defaults, RequestOutput.prompt."""

import json

import pytest

from bare_engine import LLM, SamplingParams
from bare_engine.errors import ConfigError, InvalidRequestError
from bare_engine.testing import make_model_dir

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = make_model_dir(tmp_path_factory.mktemp("llama"), "llama")
    (path / "generation_config.json").write_text(json.dumps({
        "eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.85, "top_k": 20,
        "repetition_penalty": 1.1, "max_new_tokens": 7,
    }))
    return path


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, num_kv_blocks=64, max_model_len=128)


def test_prompt_dicts_mixed_with_strings_and_ids(llm):
    tok = llm.get_tokenizer()
    text = "the quick brown fox"
    ids = tok(text).input_ids
    outs = llm.generate([text, {"prompt": text}, {"prompt_token_ids": ids}, ids], GREEDY, use_tqdm=False)
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
    assert [o.prompt for o in outs] == [text, text, None, None]
    assert all(o.prompt_token_ids == ids for o in outs)
    single = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    assert single[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


@pytest.mark.parametrize("prompts, message", [
    ({"prompt": "hi", "images": []}, "unknown key 'images'"),
    ([{"text": "hi"}], "prompt 0 has unknown key 'text'"),
    ([{"prompt": "a", "prompt_token_ids": [3]}], "exactly one of"),
    ([3, 4, "five"], "mixes token ids and other items: item 2 is str 'five'"),
    ([[3, 4.0, 5]], "prompt 0: token 1 is float 4.0"),
    ([{"prompt_token_ids": [3, 4.5]}], "'prompt_token_ids': token 1 is float 4.5"),
    ([{"prompt": 17}], "'prompt' must be a string, got int 17"),
    ([], "non-empty list"),
    (3.5, "got float 3.5"),
])
def test_malformed_prompts_name_the_problem(llm, prompts, message):
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace("[", r"\[")):
        llm.generate(prompts, GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_bad_prompt_in_a_batch_leaves_nothing_queued(llm):
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate(["the fox", [10**9]], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert len(llm.generate(["the fox"], GREEDY, use_tqdm=False)) == 1


def test_chat_renders_the_template_and_reports_the_prompt(llm):
    tok = llm.get_tokenizer()
    conv = [{"role": "user", "content": "Write one new problem"}]
    expected = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    out = llm.chat(conv, GREEDY, use_tqdm=False)[0]
    assert out.prompt == expected and expected.endswith("<|assistant|>")
    assert out.prompt_token_ids == tok(expected, add_special_tokens=False).input_ids
    ref = llm.generate([{"prompt_token_ids": out.prompt_token_ids}], GREEDY, use_tqdm=False)[0]
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids

    two = llm.chat([conv, conv + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]],
                   GREEDY, use_tqdm=False)
    assert two[0].prompt == expected and two[1].prompt.count("<|user|>") == 2
    no_gen = llm.chat(conv, GREEDY, use_tqdm=False, add_generation_prompt=False)[0]
    assert not no_gen.prompt.endswith("<|assistant|>")
    custom = llm.chat(conv, GREEDY, use_tqdm=False, chat_template="{{ messages[0]['content'] }} =>")[0]
    assert custom.prompt == "Write one new problem =>"


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"content": "x"}], "message 0 needs a string 'role'"),
    ([{"role": "user"}], "needs a 'content' string"),
    (["hello"], "message 0 is str 'hello'"),
])
def test_malformed_chat_messages(llm, messages, message):
    with pytest.raises(InvalidRequestError, match=message):
        llm.chat(messages, GREEDY, use_tqdm=False)


def test_chat_without_a_template_is_refused(tmp_path):
    llm = LLM(make_model_dir(tmp_path, "llama", chat_template=False), num_kv_blocks=32, max_model_len=64)
    with pytest.raises(InvalidRequestError, match="no chat template"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False)


def test_sampling_defaults_come_from_generation_config(llm, model_dir):
    params = llm.get_default_sampling_params()
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (
        0.6, 0.85, 20, 1.1, 7)
    out = llm.generate(["the quick"], use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) <= 7
    # The same request with the defaults spelled out draws the same tokens (same engine seed stream).
    a = LLM(model_dir, num_kv_blocks=64, max_model_len=128).generate(["the quick"], use_tqdm=False)[0]
    b = LLM(model_dir, num_kv_blocks=64, max_model_len=128).generate(
        ["the quick"], SamplingParams(temperature=0.6, top_p=0.85, top_k=20, repetition_penalty=1.1, max_tokens=7),
        use_tqdm=False)[0]
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_generation_config_opt_out(model_dir):
    for mode in ("vllm", None):
        params = LLM(model_dir, num_kv_blocks=64, max_model_len=128, generation_config=mode).get_default_sampling_params()
        assert params == SamplingParams()
    with pytest.raises(ConfigError, match="generation_config must be"):
        LLM(model_dir, num_kv_blocks=64, max_model_len=128, generation_config="hf")


def test_bad_generation_config_names_the_file(tmp_path):
    path = make_model_dir(tmp_path, "llama")
    (path / "generation_config.json").write_text(json.dumps({"temperature": -1.0}))
    with pytest.raises(ConfigError, match="generation_config.json.*temperature"):
        LLM(path, num_kv_blocks=32, max_model_len=64)
