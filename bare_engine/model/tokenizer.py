"""Loading a model's own tokenizer from local files."""

from __future__ import annotations

from pathlib import Path

from bare_engine.errors import ModelLoadError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(model_dir: Path):
    """The model's own tokenizer, from local files only (never a hub call)."""
    from transformers import AutoTokenizer

    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"cannot load the tokenizer: {model_dir} has none of the tokenizer files "
            f"({', '.join(TOKENIZER_FILES)}); copy them from the model's original checkpoint."
        )
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types here; all mean "no usable tokenizer"
        reason = " ".join(str(exc).split()) or type(exc).__name__  # its whole message, on one line
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise ModelLoadError(f"cannot load the tokenizer from {model_dir} ({type(exc).__name__}: {reason})") from None
