"""Where a model comes from: a checkpoint directory, or a LoRA adapter over a base checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bare_engine.errors import ModelLoadError
from bare_engine.model.lora import LoraAdapter, is_lora_adapter


@dataclass
class ModelSpec:
    """A model to load: a checkpoint directory, or a LoRA adapter directory plus (optionally) its base."""

    path: str | Path
    base: str | Path | None = None


@dataclass
class ModelSource:
    """Where a model's config, weights and tokenizer come from; `adapter` is merged while loading."""

    weights_dir: Path
    tokenizer_dir: Path
    adapter: LoraAdapter | None = None


def resolve_model_source(spec: str | Path | ModelSpec) -> ModelSource:
    """A model directory, or a LoRA adapter directory whose base comes from `spec.base` or its config."""
    path, base = (Path(spec.path), spec.base) if isinstance(spec, ModelSpec) else (Path(spec), None)
    if not is_lora_adapter(path):
        return ModelSource(path, path)
    adapter = LoraAdapter.from_dir(path)
    base_path = Path(base or adapter.base_model_name_or_path or "")
    if not base_path.is_absolute() and not base_path.is_dir():
        base_path = path / base_path
    if not (base_path / "config.json").is_file():
        raise ModelLoadError(
            f"LoRA adapter {path} needs its base model, but {base_path} is not a local model directory; "
            "name the base checkpoint's path in the config"
        )
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    return ModelSource(base_path, path if has_tokenizer else base_path, adapter)
