"""The seeded Gumbel-max draw over the kept tokens: from the candidates or over the whole row."""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_keys import _order_key
from .sampling_logits import _processed_logits
from .sampling_noise import _gumbel_scores, _noise_bits, _noise_bits_block
from .sampling_threshold import _load_candidates


@triton.jit
def _sample_candidates(key_lo, min_z, seed, position, cand_val_ptr, cand_idx_ptr, row, count, m_safe,
                       CAP: tl.constexpr, CH: tl.constexpr):
    """Gumbel-max over the kept candidates; returns (token, its z, kept mass)."""
    best = float("-inf")
    best_slot = 0
    mass = 0.0
    for start in range(0, count, CH):
        slots, live, vals, idxs, keys, expz = _load_candidates(
            cand_val_ptr, cand_idx_ptr, row, start, count, m_safe, CAP, CH)
        kept = live & (keys >= key_lo) & (vals >= min_z)
        mass += tl.sum(tl.where(kept, expz, 0.0), axis=0)
        score = tl.where(kept, _gumbel_scores(vals, _noise_bits(seed, position, idxs)), float("-inf"))
        chunk_best = tl.max(score, axis=0)
        chunk_slot = tl.min(tl.where(score == chunk_best, slots, CAP), axis=0)
        better = chunk_best > best
        best_slot = tl.where(better, chunk_slot, best_slot)
        best = tl.where(better, chunk_best, best)
    token = tl.load(cand_idx_ptr + row * CAP + best_slot, mask=count > 0, other=0)
    token_z = tl.load(cand_val_ptr + row * CAP + best_slot, mask=count > 0, other=float("-inf"))
    return token, token_z, mass


@triton.jit
def _sample_full_row(
    key_lo, min_z, m_safe, seed, position, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr,
    counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, SIZE: tl.constexpr,
    SUB: tl.constexpr,
):
    """Gumbel-max over the kept tokens of the whole row; returns (token, its z, kept mass)."""
    lanes = tl.arange(0, SIZE)
    best = float("-inf")
    best_idx = 0
    best_z = float("-inf")
    mass = 0.0
    for start in range(0, vocab, SIZE):
        offs = start + lanes
        inb = offs < vocab
        sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
        live = inb & (_order_key(sub_max) >= key_lo) & (sub_max >= min_z) & (sub_max > float("-inf"))
        if tl.max(live.to(tl.int32), axis=0) > 0:
            z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                  counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                  HAS_PEN, HAS_BIAS, HAS_MASK)
            kept = live & (_order_key(z) >= key_lo) & (z >= min_z) & (z > float("-inf"))
            mass += tl.sum(tl.where(kept, tl.exp(z - m_safe), 0.0), axis=0)
            score = tl.where(kept, _gumbel_scores(z, _noise_bits_block(seed, position, start, SIZE)),
                             float("-inf"))
            blk_best = tl.max(score, axis=0)
            blk_arg = tl.min(tl.where(score == blk_best, lanes, SIZE), axis=0)
            better = blk_best > best
            best_z = tl.where(better, tl.sum(tl.where(lanes == blk_arg, z, 0.0), axis=0), best_z)
            best_idx = tl.where(better, start + blk_arg, best_idx)
            best = tl.where(better, blk_best, best)
    return best_idx, best_z, mass
