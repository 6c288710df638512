"""Pass 3: copy each block's candidates (tokens in bins <= the cut) to the row's buffer, in token order."""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_keys import _rel_bin
from .sampling_logits import _load_row_params, _processed_logits


@triton.jit
def _compact_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, stats_i_ptr, blk_cand_ptr, cand_val_ptr, cand_idx_ptr, vocab, num_sub, num_blocks,
    CAP: tl.constexpr, HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    """Copy the block's tokens in bins <= cut to the row's candidate buffer, in token order."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    before = tl.load(blk_cand_ptr + (row * num_blocks + blk) * 2 + 0)
    mine = tl.load(blk_cand_ptr + (row * num_blocks + blk) * 2 + 1)
    if (mine > 0) & (before < CAP):
        temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
            fparams_ptr, iparams_ptr, row)
        cut = tl.load(stats_i_ptr + row * 8 + 1)
        anchor = tl.load(stats_i_ptr + row * 8 + 4)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        inb = offs < vocab
        sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
        live = inb & (_rel_bin(sub_max, anchor, NUM_BINS) <= cut)
        z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                              counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                              HAS_PEN, HAS_BIAS, HAS_MASK)
        flag = (live & (_rel_bin(z, anchor, NUM_BINS) <= cut)).to(tl.int32)
        slot = before + tl.cumsum(flag, axis=0) - flag
        store = (flag != 0) & (slot < CAP)
        tl.store(cand_val_ptr + row * CAP + slot, z, mask=store)
        tl.store(cand_idx_ptr + row * CAP + slot, offs, mask=store)
