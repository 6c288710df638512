"""Attention backend selection, and the Triton backend end to end against the torch backend."""

import logging
import random

import pytest
import torch

from bare_engine import LLM, SamplingParams
from bare_engine.errors import ConfigError
from bare_engine.model.layers.attention import BACKEND_ENV, select_backend
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "qwen3", num_key_value_heads=1)


def test_triton_backend_greedy_equals_torch_backend(model_dir):
    rng = random.Random(0)
    shared = [rng.randrange(3, 480) for _ in range(20)]
    prompts = [shared + [rng.randrange(3, 480) for _ in range(n)] for n in (1, 6, 13)] + [[7]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    # Chunked prefill + prefix-cache hits exercise the prefill kernel on mixed batches.
    kwargs = dict(block_size=16, max_num_batched_tokens=16)
    reference = LLM(model_dir, attention_backend="torch", **kwargs).generate(prompts, params, use_tqdm=False)
    triton_llm = LLM(model_dir, attention_backend="triton", **kwargs)
    assert triton_llm.engine.backend.name == "triton"
    got = triton_llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in reference]


def test_env_variable_overrides_config(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert select_backend("triton", torch.device("cpu")).name == "torch"
    monkeypatch.setenv(BACKEND_ENV, "nonsense")
    with pytest.raises(ConfigError, match="unknown attention backend 'nonsense'"):
        select_backend("auto", torch.device("cpu"))


def test_auto_on_cpu_is_torch_and_is_logged(monkeypatch, caplog):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="bare_engine.model.layers.attention"):
        assert select_backend("auto", torch.device("cpu")).name == "torch"
    assert "attention backend: torch" in caplog.text


def test_flash_attn_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with pytest.raises(ConfigError, match="flash"):
        select_backend("flash_attn", torch.device("cpu"))
