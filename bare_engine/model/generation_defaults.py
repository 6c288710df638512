"""Default sampling parameters from a checkpoint's generation_config.json.

As vLLM's ``generation_config="auto"``: when a request comes without SamplingParams, the
model's own recommended temperature, top_p, top_k, min_p, repetition_penalty and
max_new_tokens apply; ``"vllm"`` (or None) keeps SamplingParams' own defaults.
"""

from __future__ import annotations

from pathlib import Path

from bare_engine.model.config import read_json
from bare_engine.errors import ConfigError, InvalidSamplingParamsError
from bare_engine.sampling_params import SamplingParams

GENERATION_CONFIG_MODES = ("auto", "vllm")
# generation_config.json key -> SamplingParams field
_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def generation_overrides(model_dir: Path, mode: str | None) -> dict:
    """The SamplingParams fields the checkpoint sets ({} for mode "vllm"/None or no file)."""
    if mode is None or mode == "vllm":
        return {}
    if mode != "auto":
        raise ConfigError(f"generation_config must be 'auto', 'vllm' or None, got {mode!r}")
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    data = read_json(path, "generation config")
    return {field: data[key] for key, field in _KEYS.items() if data.get(key) is not None}


def default_sampling_params(model_dir: Path, mode: str | None) -> SamplingParams:
    try:
        return SamplingParams(**generation_overrides(model_dir, mode))
    except InvalidSamplingParamsError as exc:
        raise ConfigError(f"{Path(model_dir) / 'generation_config.json'}: {exc}") from None
