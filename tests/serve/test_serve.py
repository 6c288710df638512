"""`bare-engine serve` in-process on 127.0.0.1, driven by the real openai client, on the bundled demo pair."""

import asyncio
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR
from bare_engine.serve import engine_view
from bare_engine.serve.launch import ServerThread
from bare_engine.serve.streaming import TextStream, safe_length

MAX_MODEL_LEN = 256
PROMPT = "Question: Mia has"
CHAT = [{"role": "user", "content": "Write one word problem about apples."}]


def engine_config(**kw):
    return EngineConfig(num_kv_blocks=kw.pop("num_kv_blocks", 512), max_model_len=MAX_MODEL_LEN, **kw)


@pytest.fixture(scope="module")
def server():
    engine = LLMEngine({"base": BASE_MODEL_DIR, "instruct": INSTRUCT_MODEL_DIR}, engine_config())
    with ServerThread(engine, max_waiting=256) as srv:
        yield srv


@pytest.fixture(scope="module")
def offline():
    return {name: LLM(path, engine_config(num_kv_blocks=64)) for name, path in
            (("base", BASE_MODEL_DIR), ("instruct", INSTRUCT_MODEL_DIR))}


def chat_ids(llm, messages):
    tok = llm.engine.tokenizer()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def wait_idle(srv, timeout=20.0):
    """Until the engine has no request and every KV block is free again (bounded)."""
    engine = srv.engine_loop.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.has_unfinished_requests() and engine_view.kv_blocks(engine)[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine not idle: {engine.num_unfinished_requests()} requests, "
                         f"{engine_view.kv_blocks(engine)} KV blocks (used, total)")


def scrape(srv) -> dict:
    """{(name, labels): value} of every sample on /metrics (parsed by prometheus_client)."""
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ----- text streaming ------------------------------------------------------------------

def test_safe_length_withholds_what_a_stop_string_may_cut():
    assert safe_length("abc", []) == 3
    assert safe_length("the en", ["end"]) == 4  # "en" may become "end"
    assert safe_length("the e", ["end", "xe"]) == 4
    assert safe_length("an end here", ["end"]) == 3
    assert safe_length("abc", ["zz"]) == 3


def test_text_stream_joins_to_final_text(offline):
    tok = offline["base"].engine.tokenizer()
    ids = tok("Tom has 12 apples and buys 3 more.").input_ids
    stream = TextStream(tok, ["buys"])
    sent = "".join(stream.add([t]) for t in ids)
    final = tok.decode(ids).split("buys")[0]
    assert final.startswith(sent) and "buy" not in sent
    assert sent + stream.finish(final) == final


# ----- endpoints -----------------------------------------------------------------------

def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["base", "instruct"]
    assert all(m.object == "model" for m in models)


def test_completion_on_base_and_chat_on_instruct(client, offline):
    out = client.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0.0)
    tok = offline["base"].engine.tokenizer()
    want = offline["base"].generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)[0]
    assert out.object == "text_completion" and out.model == "base"
    assert out.choices[0].text == want.outputs[0].text
    assert out.choices[0].finish_reason == want.outputs[0].finish_reason
    assert out.usage.prompt_tokens == len(tok(PROMPT).input_ids)
    assert out.usage.completion_tokens == len(want.outputs[0].token_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens

    chat = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=12, temperature=0.0)
    ids = chat_ids(offline["instruct"], CHAT)
    want = offline["instruct"].generate(ids, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)[0]
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == want.outputs[0].text
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.usage.completion_tokens == len(want.outputs[0].token_ids)


def test_prompt_list_and_token_ids_give_one_choice_each(client, offline):
    tok = offline["base"].engine.tokenizer()
    prompts = [PROMPT, "Question: Tom buys"]
    as_text = client.completions.create(model="base", prompt=prompts, max_tokens=6, temperature=0.0, n=2)
    as_ids = client.completions.create(model="base", prompt=[tok(p).input_ids for p in prompts], max_tokens=6,
                                       temperature=0.0, n=2)
    assert [c.index for c in as_text.choices] == [0, 1, 2, 3]
    assert [c.text for c in as_text.choices] == [c.text for c in as_ids.choices]
    assert as_text.usage.prompt_tokens == sum(len(tok(p).input_ids) for p in prompts)
    assert as_text.usage.completion_tokens == as_ids.usage.completion_tokens


def test_seeded_output_equals_offline_generate(client, offline):
    params = dict(temperature=0.9, top_p=0.95, top_k=50, max_tokens=24, seed=1234)
    out = client.completions.create(model="base", prompt=PROMPT, n=2, max_tokens=24, temperature=0.9, top_p=0.95,
                                    seed=1234, extra_body={"top_k": 50})
    want = offline["base"].generate(PROMPT, SamplingParams(n=2, **params), use_tqdm=False)[0]
    assert [c.text for c in out.choices] == [c.text for c in want.outputs]
    assert len({c.text for c in out.choices}) == 2  # the samples really are sampled

    chat = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=24, temperature=0.9,
                                          top_p=0.95, seed=1234, extra_body={"top_k": 50})
    ids = chat_ids(offline["instruct"], CHAT)
    want = offline["instruct"].generate(ids, SamplingParams(**params), use_tqdm=False)[0]
    assert chat.choices[0].message.content == want.outputs[0].text


def _stop_inside(text: str) -> str:
    """The shortest stop string that first occurs in the second half of ``text`` (so it cuts
    ``text`` in its middle, not at an earlier occurrence)."""
    middle = len(text) // 2
    return next(text[i:i + n] for n in range(2, len(text)) for i in range(middle, len(text) - n + 1)
                if text[i:i + n].strip() and text.find(text[i:i + n]) == i)


def test_streamed_text_equals_non_streamed_with_stop_strings(client):
    # A whole question: on a bare "Mia has" the demo base (it has an induction head) can loop
    # on one token, and a text of one repeated token has no stop string that cuts it midway.
    prompt = "Question: Mia has 5 apples. She buys 3 more apples. How many apples does Mia have now?\nAnswer:"
    kw = dict(model="base", prompt=prompt, max_tokens=32, temperature=0.8, seed=5, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    stop = _stop_inside(full)
    plain = client.completions.create(**kw, stop=[stop, "\n\n\n"])
    assert plain.choices[0].finish_reason == "stop" and len(plain.choices[0].text) < len(full)
    chunks = list(client.completions.create(**kw, stop=[stop, "\n\n\n"], stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2  # it really streamed
    assert "".join(texts) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    ckw = dict(model="instruct", messages=CHAT, max_tokens=20, temperature=0.8, seed=9, n=2)
    plain = client.chat.completions.create(**ckw)
    stream = list(client.chat.completions.create(**ckw, stream=True))
    for choice in plain.choices:
        parts = [c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].index == choice.index]
        reasons = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].index == choice.index]
        assert "".join(parts) == choice.message.content
        assert reasons[-1] == choice.finish_reason


def test_64_concurrent_clients_all_answered_and_kv_pool_back_to_full(server):
    async def one(client, i):
        if i % 2:
            out = await client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=8, seed=i)
            return out.choices[0].message.content is not None and out.usage.completion_tokens >= 1
        out = await client.completions.create(model="base", prompt=f"Question: {i} apples", max_tokens=8, seed=i,
                                              stream=bool(i % 4 == 0))
        if i % 4 == 0:
            return bool([chunk async for chunk in out])
        return out.usage.completion_tokens >= 1

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=90) as c:
            return await asyncio.wait_for(asyncio.gather(*(one(c, i) for i in range(64))), 120)

    assert all(asyncio.run(run()))
    wait_idle(server)


def _aborts(srv) -> float:
    return sum(v for (name, labels), v in scrape(srv).items()
               if name == "bare_engine_requests_finished_total" and ("finish_reason", "abort") in labels)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server, client):
    before = _aborts(server)
    long = dict(model="base", prompt=PROMPT, max_tokens=240, extra_body={"ignore_eos": True})
    stream = client.completions.create(**long, stream=True)
    for _, _ in zip(range(3), stream):
        pass
    assert engine_view.kv_blocks(server.engine_loop.engine)[0] > 0
    stream.close()
    wait_idle(server)
    # A non-streamed request whose client gives up is aborted too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"model": "base", "prompt": PROMPT, "max_tokens": 240,
                                                        "ignore_eos": True}, timeout=0.1)
    wait_idle(server)
    assert _aborts(server) == before + 2


BAD_REQUESTS = [
    # (endpoint, body, status, param)
    ("completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("chat/completions", {"model": "nope", "messages": CHAT}, 404, "model"),
    ("completions", {"prompt": "x"}, 400, "model"),
    ("completions", {"model": "base"}, 400, "prompt"),
    ("completions", {"model": "base", "prompt": ""}, 400, "prompt"),
    ("completions", {"model": "base", "prompt": [1, "a"]}, 400, "prompt"),
    ("completions", {"model": "base", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("completions", {"model": "base", "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("completions", {"model": "base", "prompt": "x", "n": 0}, 400, "n"),
    ("completions", {"model": "base", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"model": "base", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("completions", {"model": "base", "prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ("completions", {"model": "base", "prompt": "x", "stop": [""]}, 400, "stop"),
    ("completions", {"model": "base", "prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
    ("completions", {"model": "base", "prompt": "x", "logit_bias": {"5": 1000}}, 400, "logit_bias"),
    ("completions", {"model": "base", "prompt": "x", "n": 100000}, 400, "n"),
    ("completions", {"model": "base", "prompt": "x", "echo": True, "stream": True}, 400, "echo"),
    ("completions", {"model": "base", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"model": "base", "prompt": [5] * MAX_MODEL_LEN}, 400, "prompt"),
    ("completions", {"model": "base", "prompt": "x", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
    ("completions", {"model": "base", "prompt": [1, 2, 10 ** 6]}, 400, "prompt"),
    ("completions", {"model": "base", "prompt": [1, 2, 10 ** 6], "stream": True}, 400, "prompt"),
    ("chat/completions", {"model": "instruct", "messages": []}, 400, "messages"),
    ("chat/completions", {"model": "instruct", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("chat/completions", {"model": "instruct", "messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("chat/completions", {"model": "instruct", "messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
]


@pytest.mark.parametrize("endpoint,body,status,param", BAD_REQUESTS)
def test_bad_input_gets_its_4xx_with_an_openai_error_body(server, client, endpoint, body, status, param):
    with pytest.raises(openai.APIStatusError) as info:
        client.post(f"/{endpoint}", body=body, cast_to=object)
    assert info.value.status_code == status
    error = info.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_invalid_json_and_unknown_route_then_server_keeps_serving(server, client):
    for raw in (b"{bad json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", content=b'{"model": "base", "prompt": "x", "temperature": NaN}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"]
    assert client.completions.create(model="base", prompt=PROMPT, max_tokens=2).choices[0].finish_reason
    assert httpx.get(server.url + "/health").status_code == 200
    wait_idle(server)


def test_logprobs(client):
    out = client.completions.create(model="base", prompt=PROMPT, max_tokens=4, logprobs=3, temperature=0.0)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=3, logprobs=True,
                                          top_logprobs=2, temperature=0.0)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)


def test_waiting_queue_is_bounded_with_503(offline):
    engine = LLMEngine({"base": BASE_MODEL_DIR}, engine_config(num_kv_blocks=64, max_num_seqs=1))
    with ServerThread(engine, max_waiting=1) as srv:
        async def one(c, i):
            try:
                await c.completions.create(model="base", prompt=PROMPT, max_tokens=16, seed=i)
                return 200
            except openai.APIStatusError as exc:
                assert exc.body["type"] == "server_error" and "waiting queue is full" in exc.body["message"]
                return exc.status_code

        async def run(n):
            async with openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60) as c:
                return await asyncio.wait_for(asyncio.gather(*(one(c, i) for i in range(n))), 60)

        statuses = asyncio.run(run(8))
        assert set(statuses) == {200, 503}
        assert asyncio.run(run(1)) == [200]
        assert scrape(srv)[("bare_engine_requests_rejected_total", ())] == statuses.count(503)
        wait_idle(srv)


def test_metrics_scrape_parses(server, client):
    client.completions.create(model="base", prompt=PROMPT, max_tokens=5, extra_body={"ignore_eos": True})
    wait_idle(server)
    samples = scrape(server)
    names = {name for name, _ in samples}
    for name in ("bare_engine_num_requests_running", "bare_engine_num_requests_waiting",
                 "bare_engine_kv_blocks_used", "bare_engine_kv_blocks_total", "bare_engine_num_preemptions_total",
                 "bare_engine_prompt_tokens_total", "bare_engine_generation_tokens_total",
                 "bare_engine_time_to_first_token_seconds_bucket", "bare_engine_time_per_output_token_seconds_count"):
        assert name in names, name
    for model in ("base", "instruct"):
        assert (("bare_engine_num_requests_running", (("model", model),))) in samples
    assert samples[("bare_engine_kv_blocks_used", ())] == 0
    assert samples[("bare_engine_kv_blocks_total", ())] == engine_view.kv_blocks(server.engine_loop.engine)[1]
    assert samples[("bare_engine_generation_tokens_total", (("model", "base"),))] >= 5
    assert samples[("bare_engine_time_to_first_token_seconds_count", (("model", "base"),))] >= 1
    json.dumps({str(k): v for k, v in samples.items()})  # plain numbers


@pytest.mark.filterwarnings("ignore::UserWarning")  # litellm's pydantic models warn at import
def test_litellm_paper_call_pattern(server, client, monkeypatch):
    """The paper's clients: the base model through text-completion-openai/, the instruct one through openai/."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    litellm = pytest.importorskip("litellm")
    where = dict(api_base=server.url + "/v1", api_key="unused", max_tokens=8, temperature=0.0)
    base = litellm.text_completion(model="text-completion-openai/base", prompt=PROMPT, **where)
    want = client.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0.0)
    assert base.choices[0].text == want.choices[0].text
    chat = litellm.completion(model="openai/instruct", messages=CHAT, **where)
    want = client.chat.completions.create(model="instruct", messages=CHAT, max_tokens=8, temperature=0.0)
    assert chat.choices[0].message.content == want.choices[0].message.content
    assert chat.usage.completion_tokens == want.usage.completion_tokens


# ----- generation_config defaults --------------------------------------------------------

def test_request_fields_override_generation_config_defaults():
    from bare_engine.serve.protocol import ChatCompletionRequest

    defaults = {"temperature": 0.0, "top_p": 0.9, "max_tokens": 5}
    body = ChatCompletionRequest(model="m", messages=CHAT)
    params = body.sampling_params(body.max_new_tokens(), None, defaults)
    assert (params.temperature, params.top_p, params.max_tokens) == (0.0, 0.9, 5)
    body = ChatCompletionRequest(model="m", messages=CHAT, temperature=0.7, max_tokens=9)
    params = body.sampling_params(body.max_new_tokens(), None, defaults)
    assert (params.temperature, params.top_p, params.max_tokens) == (0.7, 0.9, 9)
    assert body.sampling_params(body.max_new_tokens(), None).top_p == 1.0  # no defaults: SamplingParams'


@pytest.mark.parametrize("mode", ["auto", "vllm"])
def test_unset_sampling_fields_come_from_the_models_generation_config(tmp_path, offline, mode):
    import shutil

    model = tmp_path / "instruct"
    shutil.copytree(INSTRUCT_MODEL_DIR, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(config | {"temperature": 0.0, "max_new_tokens": 6}))
    engine = LLMEngine({"m": model}, engine_config(num_kv_blocks=64))
    with ServerThread(engine, generation_config=mode) as srv, \
            openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        chats = [c.chat.completions.create(model="m", messages=CHAT, seed=i, extra_body={"ignore_eos": True})
                 for i in range(3)]  # neither temperature nor max_tokens
    ids = chat_ids(offline["instruct"], CHAT)
    if mode == "auto":  # greedy and 6 tokens, from generation_config.json, whatever the seed
        want = offline["instruct"].generate(ids, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
                                            use_tqdm=False)[0].outputs[0]
        assert [x.choices[0].message.content for x in chats] == [want.text] * 3
        assert [x.usage.completion_tokens for x in chats] == [6] * 3
    else:  # SamplingParams' defaults: temperature 1, no max_tokens (the context's end)
        assert len({x.choices[0].message.content for x in chats}) > 1
        assert all(x.usage.completion_tokens > 6 for x in chats)
