"""Attention backend selection, and the Triton and native CPU backends end to end against the torch backend."""

import logging
import random

import pytest
import torch

from bare_engine import LLM, SamplingParams
from bare_engine.errors import ConfigError
from bare_engine.kernels import cpu_attention, native
from bare_engine.model.layers.attention import BACKEND_ENV, select_backend
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "qwen3", num_key_value_heads=1)


def greedy_under(model_dir, backend, dtype="float32"):
    rng = random.Random(0)
    shared = [rng.randrange(3, 480) for _ in range(20)]
    prompts = [shared + [rng.randrange(3, 480) for _ in range(n)] for n in (1, 6, 13, 40)] + [[7]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    # Chunked prefill + prefix-cache hits exercise the prefill kernel on mixed batches.
    llm = LLM(model_dir, attention_backend=backend, block_size=16, max_num_batched_tokens=16, dtype=dtype)
    assert llm.engine.backend.name == backend
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def test_triton_backend_greedy_equals_torch_backend(model_dir):
    assert greedy_under(model_dir, "triton") == greedy_under(model_dir, "torch")


@pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler")
def test_cpu_backend_greedy_equals_torch_backend(model_dir):
    assert greedy_under(model_dir, "cpu") == greedy_under(model_dir, "torch")


def test_env_variable_overrides_config(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert select_backend("triton", torch.device("cpu")).name == "torch"
    monkeypatch.setenv(BACKEND_ENV, "nonsense")
    with pytest.raises(ConfigError, match="unknown attention backend 'nonsense'"):
        select_backend("auto", torch.device("cpu"))


@pytest.mark.skipif(not cpu_attention.available(), reason="no C compiler")
def test_auto_on_cpu_is_the_native_kernel_and_is_logged(monkeypatch, caplog):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="bare_engine.model.layers.attention"):
        assert select_backend("auto", torch.device("cpu")).name == "cpu"
    assert "attention backend: cpu" in caplog.text


def test_without_a_compiler_auto_falls_back_to_torch_and_cpu_is_a_clear_error(monkeypatch, caplog):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(cpu_attention, "_library", lambda: "no C compiler (cc, gcc or $CC) on PATH")
    with caplog.at_level(logging.INFO, logger="bare_engine.model.layers.attention"):
        assert select_backend("auto", torch.device("cpu")).name == "torch"
    assert "no C compiler" in caplog.text
    with pytest.raises(ConfigError, match="C compiler"):
        select_backend("cpu", torch.device("cpu"))


def test_a_failing_build_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("BARE_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.raises(OSError, match="failed"):
        native.build(native.Path(native.__file__).with_name("cpu_attention.c"))
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_flash_attn_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with pytest.raises(ConfigError, match="flash"):
        select_backend("flash_attn", torch.device("cpu"))
