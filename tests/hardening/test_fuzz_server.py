"""Schemathesis against the server's own OpenAPI schema (issue 30): whatever the body, no response
is a 5xx and the server keeps answering. Short and bounded for CI: FUZZ_EXAMPLES per operation,
derandomized, on the bundled demo pair with a 64-token context."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from bare_engine import EngineConfig, LLMEngine
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR
from bare_engine.serve.launch import ServerThread

FUZZ_EXAMPLES = 150
AUTH = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def server():
    engine = LLMEngine({"base": BASE_MODEL_DIR, "instruct": INSTRUCT_MODEL_DIR},
                       EngineConfig(num_kv_blocks=256, max_model_len=64))
    with ServerThread(engine, api_key="k", max_waiting=64) as srv:
        yield srv


def operations(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_describes_the_request_bodies(server):
    described = {op.path: op for op in operations(server)}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(described)
    assert described["/v1/completions"].body  # generated from CompletionRequest, not an empty body


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health"])
def test_no_request_gets_a_5xx_and_the_server_keeps_answering(server, path):
    [operation] = [op for op in operations(server) if op.path == path]

    @given(case=operation.as_strategy())
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case):
        response = case.call(base_url=server.url, headers=AUTH, timeout=60)
        assert response.status_code < 500, (case.body, response.text)
        if response.status_code >= 400 and path.startswith("/v1"):
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200

    call()


# Bodies that gave a 500 before issue 30, kept as regression cases.
FOUND = [
    b'{"model": "base", "prompt": "\\ud800"}',  # lone surrogate: TypeError in the tokenizer
    b'{"model": "instruct", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"model": "base", "prompt": "x", "stop": "\\ud800"}',  # UnicodeEncodeError
    b'{"model": "base", "prompt": "x", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # RecursionError
    b'{"model": "base", "prompt": "x", "top_k": 9223372036854775808}',  # OverflowError in the step
    b'{"model": "base", "prompt": "x", "seed": 1180591620717411303424}',
]


@pytest.mark.parametrize("body", FOUND, ids=range(len(FOUND)))
def test_bodies_that_gave_a_500_are_400s(server, body):
    response = httpx.post(server.url + "/v1/completions" if b"messages" not in body else
                          server.url + "/v1/chat/completions", content=body, timeout=60,
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400, response.text
