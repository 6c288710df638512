"""Issue 30's server cases: a client's mistake is a 4xx naming its field, one request cannot stall or
break the others, and shutdown past --shutdown-timeout aborts what is left as the README promises."""

import json
import socket
import threading
import time

import httpx
import pytest

from bare_engine import EngineConfig, LLMEngine
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR
from bare_engine.serve.launch import ServerThread
from bare_engine.serve.limits import ServeLimits

CHAT = [{"role": "user", "content": "Write one word problem about apples."}]
LIMITS = ServeLimits(max_body_bytes=64 * 1024, max_prompt_chars=20_000)


def make_engine(**kw):
    return LLMEngine({"base": BASE_MODEL_DIR, "instruct": INSTRUCT_MODEL_DIR},
                     EngineConfig(num_kv_blocks=256, max_model_len=256, **kw))


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_engine(), limits=LIMITS, api_key="k") as srv:
        yield srv


def post(srv, path, body, stream=False, **kw):
    headers = {"authorization": "Bearer k"}
    if isinstance(body, (bytes, str)):
        return httpx.post(srv.url + path, content=body, headers={**headers, "content-type": "application/json"},
                          timeout=60, **kw)
    return httpx.post(srv.url + path, json=body, headers=headers, timeout=60, **kw)


def completion(**fields):
    return {"model": "base", "prompt": "Question: Mia has", "max_tokens": 4, **fields}


RAW_BAD = [
    # (path, raw body, param): lone surrogates (JSON escapes) in a prompt, a chat message, a stop string
    ("/v1/completions", '{"model": "base", "prompt": "a \\ud800 b"}', "prompt"),
    ("/v1/completions", '{"model": "base", "prompt": ["ok", "\\udfff"]}', "prompt.1"),
    ("/v1/chat/completions", '{"model": "instruct", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
    ("/v1/completions", '{"model": "base", "prompt": "x", "stop": ["\\ud800"]}', "stop.0"),
    ("/v1/completions", '{"model": "base", "prompt": "x", "user": "' + "\\udc80" + '"}', "user"),
    # deeply nested JSON (a RecursionError once)
    ("/v1/completions", '{"model": "base", "prompt": "x", "x": ' + "[" * 20_000 + "]" * 20_000 + "}", None),
    ("/v1/completions", '{"model": "base", "prompt": "x", "x": ' + "[" * 100 + "]" * 100 + "}", "x.0.0"),
]


@pytest.mark.parametrize("path,raw,param", RAW_BAD, ids=range(len(RAW_BAD)))
def test_bad_text_and_nesting_are_400_not_500(server, path, raw, param):
    response = post(server, path, raw.encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


FIELD_BAD = [
    (completion(top_k=2**63), "top_k"),
    (completion(top_k=4294967297), "top_k"),
    (completion(seed=2**70), "seed"),
    (completion(seed=-(2**70)), "seed"),
    (completion(seed=2**63), "seed"),
    (completion(temperature=1e308), "temperature"),
    (completion(temperature=True), "temperature"),
    (completion(n=True), "n"),
    (completion(max_tokens=True), "max_tokens"),
    (completion(stop_token_ids=[10**6]), "stop_token_ids"),
    (completion(prompt=[1, 2, 10**6]), "prompt"),
    (completion(prompt=[1, 2, 10**6], stream=True), "prompt"),
    ({"model": "instruct", "messages": [{"role": "user"}]}, "messages.0"),
    ({"model": "instruct", "messages": [{"role": "system", "content": None}, *CHAT]}, "messages.0"),
]


@pytest.mark.parametrize("body,param", FIELD_BAD, ids=range(len(FIELD_BAD)))
def test_out_of_range_fields_are_400_naming_param(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def read_stream(response) -> tuple[list[dict], bool]:
    events, done = [], False
    for line in response.iter_lines():
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return events, done


def test_a_bad_request_leaves_streams_in_flight_untouched(server):
    """The issue's case: top_k >= 2**63 during two streams once ended both with an error event."""
    body = completion(max_tokens=40, ignore_eos=True, temperature=0.0, stream=True)
    results = []

    def stream():
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                          headers={"authorization": "Bearer k"}) as response:
            results.append(read_stream(response))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    bad = post(server, "/v1/completions", completion(top_k=2**63, max_tokens=40))
    for t in threads:
        t.join(60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"
    assert len(results) == 2
    for events, done in results:
        assert done and not any("error" in e for e in events)
        assert events[-1]["choices"][0]["finish_reason"] == "length"
    texts = ["".join(e["choices"][0]["text"] for e in events) for events, _ in results]
    assert texts[0] == texts[1]


def test_body_and_prompt_caps(server):
    big = post(server, "/v1/completions", completion(prompt="x " * 40_000))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    long = post(server, "/v1/completions", completion(prompt="ab" * 15_000))
    assert long.status_code == 400 and long.json()["error"]["param"] == "prompt"
    assert "20000" in long.json()["error"]["message"]
    chat = post(server, "/v1/chat/completions", {"model": "instruct", "messages": [
        {"role": "user", "content": "ab" * 15_000}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    # chunked (no Content-Length): cut off while reading
    chunks = (b"x" * 8192 for _ in range(20))
    response = httpx.post(server.url + "/v1/completions", content=chunks, timeout=60,
                          headers={"authorization": "Bearer k", "content-type": "application/json"})
    assert response.status_code == 413


def test_openapi_is_behind_the_api_key(server):
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    response = httpx.get(server.url + "/openapi.json", headers={"authorization": "Bearer k"})
    assert response.status_code == 200 and "/v1/completions" in response.json()["paths"]
    assert httpx.get(server.url + "/health").status_code == 200  # health stays open


def test_health_answers_within_a_second_while_the_largest_prompt_is_tokenized():
    limits = ServeLimits()  # the defaults: 1,000,000 characters
    prompt = ("Mia has 3 apples and buys 4 more. " * 40_000)[:limits.max_prompt_chars]
    with ServerThread(make_engine(), limits=limits) as srv:
        result = {}

        def send():
            result["response"] = httpx.post(srv.url + "/v1/completions", timeout=120,
                                            json={"model": "base", "prompt": prompt, "max_tokens": 1})

        sender = threading.Thread(target=send)
        sender.start()
        latencies = []
        while sender.is_alive() or not latencies:
            start = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        sender.join()
    response = result["response"]
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert len(latencies) >= 3 and max(latencies) < 1.0, latencies


def test_shutdown_past_the_timeout_aborts_streams_with_done_and_answers_json_503():
    engine = make_engine()
    step = engine.step
    engine.step = lambda: (time.sleep(0.05), step())[1]  # slow enough to be in flight at shutdown
    srv = ServerThread(engine, shutdown_timeout=1.0).__enter__()
    body = {"model": "base", "prompt": "Question: Mia has", "max_tokens": 200, "ignore_eos": True}
    results = {}

    def stream():
        with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            results["stream"] = read_stream(r)

    def plain():
        results["plain"] = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)

    threads = [threading.Thread(target=stream), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    start = time.monotonic()
    srv.stop()
    for t in threads:
        t.join(30)
    assert 1.0 <= time.monotonic() - start < 10
    events, done = results["stream"]
    assert done and events[-1]["choices"][0]["finish_reason"] == "abort"
    assert any(e["choices"][0]["text"] for e in events[:-1])  # it was mid-stream
    plain = results["plain"]
    assert plain.status_code == 503 and plain.headers["content-type"] == "application/json"
    assert plain.json()["error"]["type"] == "server_error"


def test_connections_are_bounded():
    limits = ServeLimits(limit_concurrency=4, timeout_keep_alive=1, header_timeout=0.5, max_header_bytes=4096)
    engine = LLMEngine({"base": BASE_MODEL_DIR}, EngineConfig(num_kv_blocks=64, max_model_len=64))
    with ServerThread(engine, limits=limits) as srv:
        big = httpx.get(srv.url + "/health", headers={"x-big": "a" * 8000}, timeout=5)
        assert big.status_code == 431 and big.json()["error"]["code"] == "headers_too_large"
        host, port = srv.url[len("http://"):].split(":")
        slow = socket.create_connection((host, int(port)), timeout=5)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        start = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - start < 3  # closed at the header timeout
        idle = socket.create_connection((host, int(port)), timeout=5)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        while idle.recv(1000):
            pass
        assert time.monotonic() - start < 3  # the idle keep-alive connection is closed
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(6)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.2)
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 503  # past limit_concurrency
        for sock in held + [slow, idle]:
            sock.close()
        time.sleep(0.8)
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200


@pytest.mark.cli
def test_sigterm_past_the_shutdown_timeout_aborts_streams_and_exits_0():
    from bare_engine.serve.launch import ServerProcess

    args = ["--port", "0", "--base", str(BASE_MODEL_DIR), "--num-kv-blocks", "256", "--max-model-len", "2048",
            "--shutdown-timeout", "1", "--log-level", "warning"]
    with ServerProcess(args) as srv:
        body = {"model": "base", "prompt": "Question: Mia has", "max_tokens": 2000, "ignore_eos": True}
        plain = {}
        thread = threading.Thread(target=lambda: plain.setdefault(
            "response", httpx.post(srv.url + "/v1/completions", json=body, timeout=60)))
        thread.start()
        with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line)
            events = [next(lines)]
            srv.terminate()
            events.extend(lines)
        thread.join(60)
        assert srv.proc.wait(60) == 0, srv.output_tail()
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data: "):])["choices"][0]["finish_reason"] == "abort"
    response = plain["response"]
    assert response.status_code == 503 and response.json()["error"]["message"] == "the server is shutting down"
