"""Issue 30's model-loading cases: each broken config or checkpoint is one clear error, raised before
anything is allocated from the config."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bare_engine import LLM
from bare_engine.errors import CheckpointError, ModelLoadError
from bare_engine.model.tokenizer import load_tokenizer
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("good"), "llama")


@pytest.fixture
def model_copy(good_dir, tmp_path):
    return shutil.copytree(good_dir, tmp_path / "model")


def edit_config(model_dir, change):
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(change(cfg)))


def edit_weights(model_dir, change):
    [path] = model_dir.glob("*.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def expect(exc_type, model_dir, *words):
    with pytest.raises(exc_type) as info:
        LLM(model_dir)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_config_that_is_not_an_object(model_copy):
    (model_copy / "config.json").write_text("[1, 2]")
    expect(ModelLoadError, model_copy, "must hold a JSON object", "list")


@pytest.mark.parametrize("key,value", [("vocab_size", 10**12), ("max_position_embeddings", 10**12),
                                       ("num_hidden_layers", 10**9), ("hidden_size", 0),
                                       ("num_attention_heads", True), ("intermediate_size", 2.5),
                                       ("rms_norm_eps", float("nan"))])
def test_absurd_sizes_are_refused_before_allocating(model_copy, key, value):
    edit_config(model_copy, lambda cfg: {**cfg, key: value})
    expect(ModelLoadError, model_copy, key)


def test_a_config_far_bigger_than_the_checkpoint_is_refused_naming_the_numbers(model_copy):
    edit_config(model_copy, lambda cfg: {**cfg, "num_hidden_layers": 4000})  # within the limit, 2000x the weights
    expect(CheckpointError, model_copy, "4000 layers", "parameters", "holds")


def test_integer_weights_are_refused(model_copy):
    edit_weights(model_copy, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].to(torch.int64)}))
    expect(CheckpointError, model_copy, "model.norm.weight", "I64", "floating point")


def test_nan_weights_are_refused(model_copy):
    name = "model.layers.0.mlp.up_proj.weight"
    edit_weights(model_copy, lambda t: t[name].fill_(float("nan")))
    expect(CheckpointError, model_copy, name, "NaN")


def test_the_missing_tokenizer_message_is_a_full_sentence(model_copy):
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"):
        (model_copy / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer(model_copy)
    message = str(info.value)
    assert message.endswith(".") and "tokenizer.json" in message and "\n" not in message
