"""Tiny test checkpoints: see bare_engine.testing (shared with the benchmarks)."""

from bare_engine.testing import (  # noqa: F401
    ARCH_CONFIGS,
    CHAT_TEMPLATE,
    hf_greedy,
    make_config,
    make_model_dir,
    make_tokenizer,
)
