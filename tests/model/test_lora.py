import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bare_engine.errors import CheckpointError, ModelLoadError
from bare_engine.model.lora import LoraAdapter, is_lora_adapter
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("base"), "llama")


def _make_adapter(base_dir, out_dir, **lora_kwargs):
    """Save a PEFT adapter with non-zero weights; returns peft's merged state dict."""
    peft = pytest.importorskip("peft", reason="peft is a test-only dependency (pip install peft)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(1)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(init_lora_weights=False, **lora_kwargs))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param))
    wrapped.save_pretrained(out_dir)
    merged = wrapped.merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def _merge_base(base_dir, adapter):
    return {name: adapter.merge(name, w) for name, w in load_file(base_dir / "model.safetensors").items()}


CASES = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "o_proj", "gate_proj"]),
    "embeddings_and_head": dict(r=2, lora_alpha=16, target_modules=["embed_tokens", "lm_head", "k_proj"]),
    "patterns_and_saved_module": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 32}, modules_to_save=["lm_head"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_merge_matches_peft_merge_and_unload(base_dir, tmp_path, case):
    expected = _make_adapter(base_dir, tmp_path, **CASES[case])
    adapter = LoraAdapter.from_dir(tmp_path)
    merged = _merge_base(base_dir, adapter)
    adapter.check_all_used()
    base = load_file(base_dir / "model.safetensors")
    changed = [n for n in merged if not torch.equal(merged[n], base[n])]
    assert changed, "the adapter changed no weight"
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_config_fields_and_rslora_scale(base_dir, tmp_path):
    _make_adapter(base_dir, tmp_path, r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj"])
    adapter = LoraAdapter.from_dir(tmp_path)
    assert (adapter.r, adapter.lora_alpha, adapter.use_rslora, adapter.fan_in_fan_out) == (4, 8.0, True, False)
    assert adapter.target_modules == ["q_proj"]
    assert adapter.base_model_name_or_path == str(base_dir)
    module = "model.layers.0.self_attn.q_proj"
    assert adapter.scale(module) == pytest.approx(8 / 2)  # alpha / sqrt(r), not alpha / r
    pair = adapter.pairs[module]
    w = torch.zeros(pair.b.shape[0], pair.a.shape[1])
    torch.testing.assert_close(adapter.merge(module + ".weight", w), 4.0 * pair.b @ pair.a)


def _write_adapter(path, config, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, path / "adapter_model.safetensors")
    return path


def _q_proj_tensors(r=2, dim=8):
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": torch.ones(r, dim), f"{prefix}.lora_B.weight": torch.ones(dim, r)}


def test_untouched_weights_unchanged_and_unused_tensors_reported(tmp_path):
    path = _write_adapter(tmp_path, {"peft_type": "LORA", "r": 2, "lora_alpha": 2}, _q_proj_tensors())
    assert is_lora_adapter(path) and not is_lora_adapter(tmp_path / "nothing")
    adapter = LoraAdapter.from_dir(path)
    w = torch.randn(8, 8)
    assert adapter.merge("model.layers.0.self_attn.k_proj.weight", w) is w
    with pytest.raises(CheckpointError, match="q_proj"):
        adapter.check_all_used()
    merged = adapter.merge("model.layers.0.self_attn.q_proj.weight", w)
    torch.testing.assert_close(merged, w + 2.0)  # scale 1, B @ A is all 2
    adapter.check_all_used()


def test_bf16_weight_keeps_dtype(tmp_path):
    adapter = LoraAdapter.from_dir(_write_adapter(tmp_path, {"r": 2, "lora_alpha": 4}, _q_proj_tensors()))
    merged = adapter.merge("model.layers.0.self_attn.q_proj.weight", torch.zeros(8, 8, dtype=torch.bfloat16))
    assert merged.dtype == torch.bfloat16 and torch.all(merged == 4.0)


def test_shape_mismatch_is_checkpoint_error(tmp_path):
    adapter = LoraAdapter.from_dir(_write_adapter(tmp_path, {"r": 2, "lora_alpha": 2}, _q_proj_tensors()))
    with pytest.raises(CheckpointError, match="shape"):
        adapter.merge("model.layers.0.self_attn.q_proj.weight", torch.zeros(16, 8))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"peft_type": "IA3"}, "IA3 is not supported"),
        ({"peft_type": "LORA", "use_dora": True}, "DoRA"),
        ({"peft_type": "LORA", "lora_bias": True}, "lora_bias"),
    ],
)
def test_unsupported_adapters_rejected(tmp_path, config, message):
    with pytest.raises(ModelLoadError, match=message):
        LoraAdapter.from_dir(_write_adapter(tmp_path, config, _q_proj_tensors()))


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        LoraAdapter.from_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="convert it to safetensors"):
        LoraAdapter.from_dir(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        LoraAdapter.from_dir(tmp_path)
    half = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 8)}
    with pytest.raises(CheckpointError, match="incomplete"):
        LoraAdapter.from_dir(_write_adapter(tmp_path / "half", {}, half))


def test_engine_greedy_with_adapter_equals_transformers_peft(base_dir, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is a test-only dependency (pip install peft)")
    from transformers import AutoModelForCausalLM

    from bare_engine import LLM, ModelSpec, SamplingParams

    _make_adapter(base_dir, tmp_path / "adapter", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    prompt = [5, 17, 42, 99, 7]
    with torch.no_grad():
        inp = torch.tensor([prompt])
        expected = reference.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=16,
                                      min_new_tokens=16, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    merged = LLM(ModelSpec(tmp_path / "adapter", base=base_dir)).generate([prompt], params, use_tqdm=False)
    assert merged[0].outputs[0].token_ids == expected
    plain = LLM(base_dir).generate([prompt], params, use_tqdm=False)
    assert plain[0].outputs[0].token_ids != expected, "the adapter did not change the output"


def test_adapter_without_local_base_is_a_clear_error(base_dir, tmp_path):
    from bare_engine import LLM

    _make_adapter(base_dir, tmp_path / "adapter", r=2, lora_alpha=4, target_modules=["q_proj"])
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="needs its base model"):
        LLM(tmp_path / "adapter")
