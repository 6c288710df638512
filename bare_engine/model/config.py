"""The model description read from a checkpoint's config.json (and generation_config.json's EOS ids)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bare_engine.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Far above any real model (the largest have ~260k vocab, ~130 layers, 10M positions), far below
# what would exhaust memory before the checkpoint is even compared with the config.
SIZE_LIMITS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1 << 12,
    "num_attention_heads": 1 << 12,
    "num_key_value_heads": 1 << 12,
    "head_dim": 1 << 12,
    "max_position_embeddings": 1 << 26,
    "sliding_window": 1 << 26,
}


@dataclass
class ModelConfig:
    """The parts of a Hugging Face config.json the engine needs."""

    path: Path
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    eos_token_ids: list[int] = field(default_factory=list)

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """What must match for two models to share one KV block pool."""
        return (self.num_layers, self.num_kv_heads, self.head_dim)

    def check_tensor_parallel(self, tp: int) -> None:
        """Raise unless heads and MLP width split evenly over ``tp`` ranks (KV heads may be replicated)."""
        def bad(what: str) -> None:
            raise ConfigError(f"{self.path.name}: tensor_parallel_size {tp} does not divide {what}")

        if self.num_heads % tp:
            bad(f"num_attention_heads {self.num_heads}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            bad(f"num_key_value_heads {self.num_kv_heads}, nor is it a multiple of it (which replicates KV heads)")
        if self.intermediate_size % tp:
            bad(f"intermediate_size {self.intermediate_size}")

    def inv_freq(self) -> torch.Tensor:
        dims = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**dims)
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        return inv_freq.float()


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{what} {path} is not valid JSON: {exc}") from None


def load_model_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"no config.json in model directory {path}")
    cfg = read_json(config_path, "model config")
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{config_path} must hold a JSON object, got a JSON {type(cfg).__name__}")
    _check_sizes(config_path, cfg)

    archs = cfg.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs] if isinstance(archs, str) else []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {', '.join(archs) or '(none given)'} in {config_path}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    try:
        return _model_config_from_dict(path, arch, cfg)
    except KeyError as exc:
        raise ModelLoadError(f"{config_path} lacks required key {exc.args[0]!r}") from None


def _check_sizes(config_path: Path, cfg: dict) -> None:
    """ModelLoadError unless every size is an integer in [1, its limit] and the floats are finite and
    positive: one clear error before anything is allocated from them."""
    for key, limit in SIZE_LIMITS.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ModelLoadError(f"{config_path}: {key} must be an integer in [1, {limit}], got {value!r}")
    for key in ("rms_norm_eps", "rope_theta"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ModelLoadError(f"{config_path}: {key} must be a positive number, got {value!r}")


def _model_config_from_dict(path: Path, arch: str, cfg: dict) -> ModelConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedArchitectureError(f"unsupported hidden_act {cfg['hidden_act']!r}; only silu is implemented")
    num_heads = cfg["num_attention_heads"]
    num_kv_heads = cfg.get("num_key_value_heads") or num_heads
    if num_heads % num_kv_heads:
        raise ModelLoadError(f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads

    # transformers >= 5 writes rope_parameters; older configs use rope_theta + rope_scaling.
    rope = dict(cfg.get("rope_parameters") or {})
    rope_theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = rope or cfg.get("rope_scaling") or None
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"unsupported rope_scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    max_pos = cfg.get("max_position_embeddings", 2048)
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if window:
        # Full attention equals sliding-window attention while sequences fit the window.
        max_pos = min(max_pos, window)

    return ModelConfig(
        path=path,
        architecture=arch,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
        o_bias=arch != "Qwen2ForCausalLM" and bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=arch == "Qwen3ForCausalLM",
        eos_token_ids=_eos_ids(path, cfg),
    )


def _eos_ids(path: Path, cfg: dict) -> list[int]:
    ids: list[int] = []
    sources = [cfg]
    gen_path = path / "generation_config.json"
    if gen_path.is_file():
        sources.append(read_json(gen_path, "generation config"))
    for source in sources:
        eos = source.get("eos_token_id")
        for token in eos if isinstance(eos, list) else [eos]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids
