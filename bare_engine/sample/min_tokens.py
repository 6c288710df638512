"""vLLM's min_tokens: a row's EOS and stop token ids are banned until it has that many output tokens."""

from __future__ import annotations

import torch

from bare_engine.engine.sequence import Sequence


def restrict_min_tokens(seqs: list[Sequence], mask: torch.Tensor) -> torch.Tensor:
    """``mask`` [rows, vocab] with the early rows' stop ids banned; a row left with no token (its grammar
    is complete and allows only EOS) keeps its mask, so the grammar's end wins over min_tokens."""
    rows, cols = [], []
    for i, seq in enumerate(seqs):
        if seq.early_stop_ids and len(seq) - seq.num_prompt_tokens < seq.params.min_tokens:
            rows += [i] * len(seq.early_stop_ids)
            cols += seq.early_stop_ids
    if not rows:
        return mask
    banned = mask.clone()
    banned[rows, cols] = False
    return torch.where(banned.any(dim=1, keepdim=True), banned, mask)
