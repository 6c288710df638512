"""Every bad input gets a specific bare_engine error with a one-line message."""

import json
import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.cli import main
from bare_engine.errors import (
    BareEngineError,
    CheckpointError,
    ConfigError,
    InvalidRequestError,
    InvalidSamplingParamsError,
    KVCacheTooSmallError,
    ModelLoadError,
    PromptTooLongError,
    UnsupportedArchitectureError,
)
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("good"), "llama")


@pytest.fixture
def model_copy(good_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(good_dir, dst)
    return dst


def rewrite_weights(model_dir, change):
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def expect(exc_type, fn, *words):
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_missing_model_dir(tmp_path):
    expect(ModelLoadError, lambda: LLM(tmp_path / "nope"), "not found", "nope")


def test_missing_config(model_copy):
    (model_copy / "config.json").unlink()
    expect(ModelLoadError, lambda: LLM(model_copy), "config.json")


def test_unsupported_architecture_is_named_with_the_supported_list(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    expect(UnsupportedArchitectureError, lambda: LLM(model_copy), "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM")


def test_missing_tensor_is_named(model_copy):
    rewrite_weights(model_copy, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    expect(CheckpointError, lambda: LLM(model_copy), "model.layers.1.self_attn.k_proj.weight", "missing")


def test_unexpected_tensor_is_named(model_copy):
    import torch

    rewrite_weights(model_copy, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    expect(CheckpointError, lambda: LLM(model_copy), "model.layers.0.mystery.weight", "unexpected")


def test_wrong_shape_tensor_is_named(model_copy):
    import torch

    rewrite_weights(model_copy, lambda t: t.update({"model.norm.weight": torch.zeros(3)}))
    expect(CheckpointError, lambda: LLM(model_copy), "model.norm.weight", "(3,)", "(64,)")


def test_truncated_safetensors(model_copy):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect(CheckpointError, lambda: LLM(model_copy), "model.safetensors")


def test_corrupt_safetensors(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    expect(CheckpointError, lambda: LLM(model_copy), "model.safetensors")


def test_prompt_longer_than_context(good_dir):
    llm = LLM(good_dir, max_model_len=32)
    expect(PromptTooLongError, lambda: llm.generate([list(range(3, 40))], use_tqdm=False), "37 tokens", "32")


def test_bad_prompts(good_dir):
    llm = LLM(good_dir)
    expect(InvalidRequestError, lambda: llm.generate([[]], use_tqdm=False), "empty")
    expect(InvalidRequestError, lambda: llm.generate([[5, 100000]], use_tqdm=False), "100000", "vocabulary")


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n"),
        (dict(logprobs=21), "logprobs"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_invalid_sampling_values(kwargs, word):
    expect(InvalidSamplingParamsError, lambda: SamplingParams(**kwargs), word)


def test_kv_budget_too_small(good_dir):
    expect(KVCacheTooSmallError, lambda: LLMEngine(good_dir, EngineConfig(num_kv_blocks=2, block_size=16)), "512", "32")


def test_bad_engine_config():
    expect(ConfigError, lambda: EngineConfig(dtype="float8"), "dtype")
    expect(ConfigError, lambda: EngineConfig(block_size=12), "block_size")


def test_every_error_is_a_bare_engine_error():
    for exc in (ModelLoadError, UnsupportedArchitectureError, CheckpointError, InvalidSamplingParamsError,
                PromptTooLongError, KVCacheTooSmallError, ConfigError, InvalidRequestError):
        assert issubclass(exc, BareEngineError)


def test_cli_reports_one_line_and_nonzero_exit(tmp_path, good_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: model directory not found")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = runner.invoke(main, ["generate", "--model", str(good_dir), "--prompt", "hi", "--top-p", "2"])
    assert result.exit_code == 1 and "top_p" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_generate_greedy(good_dir):
    result = CliRunner().invoke(
        main, ["generate", "--model", str(good_dir), "--prompt", "Question: hi", "--temperature", "0",
               "--max-tokens", "5", "--ignore-eos", "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(record["token_ids"]) == 5 and record["finish_reason"] == "length"
