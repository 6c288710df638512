"""The grammar rows of a batch: one batched bitmask fill, unpacked to the sampler's [rows, vocab] bool mask."""

from __future__ import annotations

import torch

from bare_engine.structured.compiler import import_xgrammar
from bare_engine.structured.matcher import GrammarState

# Byte value -> its 8 bits, least significant first: a packed int32 word, read as 4 little-endian
# bytes, unpacks to its 32 tokens with one gather (no per-row or per-token Python loop).
_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, ceil(V/32)] int32 (bit i of word w allows token 32*w+i) -> [B, vocab_size] bool."""
    mask = _BYTE_BITS[bitmask.contiguous().view(torch.uint8).int()].view(bitmask.shape[0], -1)
    if mask.shape[1] >= vocab_size:
        return mask[:, :vocab_size]
    # The model's vocabulary can be wider than the tokenizer's: the extra ids are never allowed.
    return torch.nn.functional.pad(mask, (0, vocab_size - mask.shape[1]), value=False)


class GrammarBatch:
    """Fills the next-token bitmasks of a batch's grammar rows in one call (xgrammar's batch matcher).
    Nothing is imported or allocated until the first grammar row."""

    def __init__(self, vocab_size: int, max_threads: int = 1):
        self.vocab_size = vocab_size
        self.max_threads = max_threads
        self._batch = None
        self._bitmask = None

    def allowed(self, states: list[GrammarState]) -> torch.Tensor:
        """[len(states), vocab_size] bool: the tokens each state's grammar allows next."""
        if self._batch is None:
            self._batch = import_xgrammar().BatchGrammarMatcher(max_threads=self.max_threads)
        if self._bitmask is None or self._bitmask.shape[0] < len(states):
            self._bitmask = import_xgrammar().allocate_token_bitmask(len(states), self.vocab_size)
        bitmask = self._bitmask[: len(states)]
        self._batch.batch_fill_next_token_bitmask([s.matcher for s in states], bitmask)
        return unpack_bitmask(bitmask, self.vocab_size)

    def restrict(self, seqs, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` [rows, vocab] bool, AND the grammar's allowed tokens on the rows of sequences with one."""
        rows = [i for i, seq in enumerate(seqs) if seq.grammar is not None]
        if rows:
            mask[rows] &= self.allowed([seqs[i].grammar for i in rows])
        return mask
