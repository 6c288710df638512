"""Structured outputs, tools and min_tokens through the server, driven by the real openai client."""

import json
import logging
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from bare_engine import EngineConfig, LLMEngine
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR
from bare_engine.serve.launch import ServerThread

CHAT = [{"role": "user", "content": "Write one word problem about apples as JSON."}]
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": {
             "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                            "b": {"type": "integer", "minimum": 0, "maximum": 999}},
             "required": ["a", "b"], "additionalProperties": False}}}]


class Problem(BaseModel):
    topic: Literal["apples", "pears"]
    count: int = Field(ge=0, le=99)
    solved: bool


@pytest.fixture(scope="module")
def server():
    engine = LLMEngine({"base": BASE_MODEL_DIR, "instruct": INSTRUCT_MODEL_DIR},
                       EngineConfig(num_kv_blocks=512, max_model_len=256))
    with ServerThread(engine, max_waiting=64) as srv:
        yield srv


@pytest.mark.parametrize("seed", range(4))
def test_parse_with_a_pydantic_model(client, seed):
    completion = client.chat.completions.parse(model="instruct", messages=CHAT, response_format=Problem,
                                               max_tokens=120, temperature=1.0, seed=seed)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Problem)
    assert Problem.model_validate_json(message.content) == message.parsed


def test_json_object_and_json_schema_response_formats(client):
    reply = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=200, seed=3,
                                           response_format={"type": "json_schema", "json_schema": {
                                               "name": "weather", "schema": WEATHER, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), WEATHER)
    for seed in range(3):
        reply = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=200, seed=seed,
                                               response_format={"type": "json_object"},
                                               extra_body={"structured_outputs": None})
        choice = reply.choices[0]
        if choice.finish_reason == "stop":  # a free-form object may outgrow max_tokens
            assert isinstance(json.loads(choice.message.content), dict)


def test_vllm_structured_outputs_field_on_both_endpoints(client):
    reply = client.completions.create(model="base", prompt="Answer:", max_tokens=20, seed=1,
                                      extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert reply.choices[0].text in ("yes", "no")
    reply = client.completions.create(model="base", prompt="Code:", max_tokens=20, seed=1,
                                      extra_body={"structured_outputs": {"regex": "[A-Z]{2}-[0-9]{2}"}})
    assert len(reply.choices[0].text) == 5 and reply.choices[0].text[2] == "-"
    reply = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=100, seed=2,
                                           extra_body={"structured_outputs": {"json": WEATHER}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), WEATHER)


def test_named_and_required_tool_calls(client):
    reply = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=100, seed=4, tools=TOOLS,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    names = set()
    for seed in range(4):
        reply = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=100, seed=seed,
                                               tools=TOOLS, tool_choice="required")
        call = reply.choices[0].message.tool_calls[0].function
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.name)
        jsonschema.validate(json.loads(call.arguments), schema)
        names.add(call.name)
    assert names <= {"get_weather", "add"}


@pytest.mark.parametrize("body, message", [
    ({"tools": TOOLS, "tool_choice": "auto"}, "tool-call parser"),
    ({"tools": TOOLS}, "tool-call parser"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format type"),
    ({"extra_body": {"structured_outputs": {"regex": "(unclosed"}}}, "regex cannot be compiled"),
    ({"extra_body": {"structured_outputs": {"choice": ["a"], "regex": "a"}}}, "exactly one"),
    ({"extra_body": {"structured_outputs": {"jsn": {}}}}, "unknown field"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"structured_outputs": {"choice": ["a"]}}},
     "give only one"),
    ({"extra_body": {"min_tokens": 50}, "max_tokens": 10}, "min_tokens"),
])
def test_bad_structured_requests_are_400(client, server, body, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model="instruct", messages=CHAT, **{"max_tokens": 20, **body})
    assert server.engine_loop.is_alive()


def test_min_tokens(client):
    reply = client.completions.create(model="base", prompt="x", max_tokens=30, seed=0,
                                      logit_bias={str(_eos(client)): 100}, extra_body={"min_tokens": 6})
    assert reply.usage.completion_tokens == 7 and reply.choices[0].finish_reason == "stop"
    reply = client.completions.create(model="base", prompt="x", max_tokens=30, seed=0,
                                      logit_bias={str(_eos(client)): 100})
    assert reply.usage.completion_tokens == 1


def _eos(client) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BASE_MODEL_DIR)).eos_token_id


def test_unknown_fields_are_logged_once(client, caplog):
    with caplog.at_level(logging.WARNING, logger="bare_engine.serve.structured"):
        for _ in range(2):
            client.completions.create(model="base", prompt="x", max_tokens=2, extra_body={"frobnicate": 1})
    assert [r.getMessage() for r in caplog.records].count(
        "ignoring unknown request field 'frobnicate' (logged once per field name)") == 1


def test_chat_logprobs_bytes_are_the_tokens_raw_bytes(client):
    reply = client.chat.completions.create(
        model="instruct", max_tokens=24, seed=5, logprobs=True, top_logprobs=2,
        messages=[{"role": "user", "content": "Répète: «café €»"}],
        extra_body={"structured_outputs": {"regex": "(é|€|«|»|a|c|f| ){8,20}"}})
    content = reply.choices[0].logprobs.content
    raw = b"".join(bytes(entry.bytes) for entry in content)
    assert raw.decode("utf-8").startswith(reply.choices[0].message.content)  # then the EOS token's text
    assert len(reply.choices[0].message.content) >= 8
    assert any(entry.token == "\ufffd" for entry in content)  # a token holding part of a character
    for entry in content:
        assert all(top.bytes for top in entry.top_logprobs)


# ----- echo, prompt logprobs, cached_tokens ----------------------------------------------------

def hf_prompt_logprobs(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_with_logprobs_matches_transformers(client, max_tokens):
    from transformers import AutoTokenizer

    prompt = "Question: Mia has 3 apples and buys 4 more."
    reply = client.completions.create(model="base", prompt=prompt, max_tokens=max_tokens, echo=True, logprobs=2,
                                      temperature=0.0)
    choice = reply.choices[0]
    ids = AutoTokenizer.from_pretrained(str(BASE_MODEL_DIR))(prompt).input_ids
    reference = hf_prompt_logprobs(BASE_MODEL_DIR, ids)
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(lp.tokens) == len(ids) + max_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - reference[i - 1, ids[i]].item()) < 1e-4
        assert max(lp.top_logprobs[i].values()) == pytest.approx(reference[i - 1].max().item(), abs=1e-4)
    assert reply.usage.completion_tokens == max_tokens
    if max_tokens == 0:
        assert choice.text == prompt


def test_echo_with_token_id_prompts_as_lm_eval_sends_them(client):
    reply = client.completions.create(model="base", prompt=[[5, 6, 7, 8], [9, 10]], max_tokens=1, echo=True,
                                      logprobs=1, temperature=0.0)
    assert [len(c.logprobs.token_logprobs) for c in reply.choices] == [5, 3]
    assert all(c.logprobs.token_logprobs[0] is None for c in reply.choices)


def test_cached_tokens_on_a_prefix_hit(client):
    prompt = "Shared prefix for the cache: " + "apples and pears " * 12
    first = client.completions.create(model="base", prompt=prompt, max_tokens=2, temperature=0.0)
    again = client.completions.create(model="base", prompt=prompt, max_tokens=2, temperature=0.0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert 0 < again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens
