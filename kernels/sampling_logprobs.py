"""Top-n logprobs: the n highest kept tokens, by (z descending, token id ascending)."""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_keys import _key_to_float, _order_key
from .sampling_logits import _processed_logits
from .sampling_threshold import _load_candidates


@triton.jit
def _top_key(key, idx):
    """int64 ordered by (key desc, idx asc) under max(): key in the high word."""
    return (key.to(tl.int64) << 32) | (0x7FFFFFFF - idx).to(tl.int64)


@triton.jit
def _store_top(top_id_ptr, top_lp_ptr, i, top, log_norm):
    """Store the i-th top entry from its _top_key (none left: id -1, logprob -inf)."""
    found = top != -9223372036854775808
    z = _key_to_float((top >> 32).to(tl.int32))
    token = 0x7FFFFFFF - (top & 0xFFFFFFFF)
    tl.store(top_id_ptr + i, tl.where(found, token, -1))
    tl.store(top_lp_ptr + i, tl.where(found, z - log_norm, float("-inf")))


@triton.jit
def _top_candidates(n_top, key_lo, min_z, log_norm, top_id_ptr, top_lp_ptr, cand_val_ptr, cand_idx_ptr, row,
                    count, m_safe, CAP: tl.constexpr, CH: tl.constexpr):
    """The n_top highest kept candidates, each found by a max over the candidates below the last."""
    prev = 9223372036854775807
    for i in range(n_top):
        top = -9223372036854775808
        for start in range(0, count, CH):
            slots, live, vals, idxs, keys, expz = _load_candidates(
                cand_val_ptr, cand_idx_ptr, row, start, count, m_safe, CAP, CH)
            kept = live & (keys >= key_lo) & (vals >= min_z)
            ranked = tl.where(kept, _top_key(keys, idxs), -9223372036854775808)
            top = tl.maximum(top, tl.max(tl.where(ranked < prev, ranked, -9223372036854775808), axis=0))
        _store_top(top_id_ptr, top_lp_ptr, i, top, log_norm)
        prev = top


@triton.jit
def _top_full_row(
    n_top, key_lo, min_z, log_norm, top_id_ptr, top_lp_ptr, logits_ptr, row_stride, row, vocab, temp, pen_row,
    seen_ptr, counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, SIZE: tl.constexpr,
    SUB: tl.constexpr,
):
    """The n_top highest kept tokens by n_top passes over the row, each taking the next one down."""
    lanes = tl.arange(0, SIZE)
    prev = 9223372036854775807
    for i in range(n_top):
        top = -9223372036854775808
        for start in range(0, vocab, SIZE):
            offs = start + lanes
            inb = offs < vocab
            sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
            live = inb & (_order_key(sub_max) >= key_lo) & (sub_max >= min_z) & (sub_max > float("-inf"))
            if tl.max(live.to(tl.int32), axis=0) > 0:
                z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                      counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                      HAS_PEN, HAS_BIAS, HAS_MASK)
                key = _order_key(z)
                kept = live & (key >= key_lo) & (z >= min_z) & (z > float("-inf"))
                ranked = tl.where(kept, _top_key(key, offs), -9223372036854775808)
                top = tl.maximum(top, tl.max(tl.where(ranked < prev, ranked, -9223372036854775808), axis=0))
        _store_top(top_id_ptr, top_lp_ptr, i, top, log_norm)
        prev = top
