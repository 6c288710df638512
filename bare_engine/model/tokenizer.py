"""Loading a model's own tokenizer from local files."""

from __future__ import annotations

from pathlib import Path

from bare_engine.errors import ModelLoadError


def load_tokenizer(model_dir: Path):
    """The model's own tokenizer, from local files only (never a hub call)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types here; all mean "no usable tokenizer"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {first_line}") from None
