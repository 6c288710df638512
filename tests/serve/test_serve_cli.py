"""`bare-engine serve` as a command: bad flags, a child process on 127.0.0.1 with an API key, graceful SIGTERM."""

import json
import socket

import httpx
import openai
import pytest
from click.testing import CliRunner

from bare_engine.cli import main
from bare_engine.serve.launch import ServerProcess

pytestmark = pytest.mark.cli


@pytest.mark.parametrize("args,message", [
    (["--model", "no-equals-sign"], "--model takes NAME=DIR"),
    (["--model", "m=/no/such/dir"], "model 'm' not found"),
    (["--base", "/no/such/dir"], "model 'base' not found"),
    (["--max-waiting", "0"], "--max-waiting must be at least 1"),
])
def test_bad_flags_are_one_error_line(args, message):
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("error: ") and message in result.output


def test_taken_port_is_one_error_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot listen on 127.0.0.1:%d" % port)


def test_child_process_api_key_and_graceful_sigterm():
    args = ["--port", "0", "--api-key", "sekret", "--num-kv-blocks", "128", "--max-model-len", "256",
            "--log-level", "warning"]
    with ServerProcess(args) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(srv.url + "/v1/models", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # open without a key
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["base", "instruct"]

        # SIGTERM while a stream is in flight: the stream still ends normally, then the process exits 0.
        body = {"model": "base", "prompt": "Question: Mia has", "max_tokens": 40, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer sekret"}) as response:
            lines = (line for line in response.iter_lines() if line)
            events.append(next(lines))
            srv.terminate()
            events.extend(lines)
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert srv.proc.wait(60) == 0, srv.output_tail()
