"""Passes 1 and 2: block statistics and histograms, then the row summary that picks the cut bin.

Pass 1 (``_block_stats_kernel``, one program per (row, block)) reads the logits once.
Pass 2 (``_summary_kernel``, one program per row) merges the block histograms and
chooses the cut bin ``J`` holding every token the filters can keep (or every top-n
logprob token), and each block's offset in the row's candidate buffer.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_keys import NO_ANCHOR, _bin_of, _rel_bin
from .sampling_logits import _load_row_params, _processed_logits
from .sampling_noise import _gumbel_scores, _noise_bits_block


@triton.jit
def _block_stats_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, part_f_ptr, part_i_ptr, hist_ptr, vocab, num_sub, num_blocks,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
        fparams_ptr, iparams_ptr, row)
    lanes = tl.arange(0, BLOCK)
    offs = blk * BLOCK + lanes
    z = _processed_logits(logits_ptr, row_stride, row, offs, offs < vocab, vocab, temp, pen_row, seen_ptr,
                          counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, HAS_PEN, HAS_BIAS, HAS_MASK)

    sub_ids = blk * (BLOCK // SUB) + tl.arange(0, BLOCK // SUB)
    sub_max = tl.max(tl.reshape(z, [BLOCK // SUB, SUB]), axis=1)
    tl.store(submax_ptr + row * num_sub + sub_ids, sub_max, mask=sub_ids < num_sub)

    z_max = tl.max(z, axis=0)
    finite = z_max > float("-inf")
    z_sum = tl.sum(tl.exp(z - tl.where(finite, z_max, 0.0)), axis=0)
    anchor = tl.where(finite, _bin_of(z_max), NO_ANCHOR)
    hist = tl.histogram(_rel_bin(z, anchor, NUM_BINS), NUM_BINS)

    # Greedy rows: argmax of z. Unfiltered sampled rows: Gumbel-max over the block.
    if mode == 1:
        score = _gumbel_scores(z, _noise_bits_block(seed, position, blk * BLOCK, BLOCK))
    else:
        score = z
    best = tl.max(score, axis=0)
    arg = tl.min(tl.where(score == best, lanes, BLOCK), axis=0)
    best_z = tl.sum(tl.where(lanes == arg, z, 0.0), axis=0)

    part = (row * num_blocks + blk) * 4
    tl.store(part_f_ptr + part + 0, z_max)
    tl.store(part_f_ptr + part + 1, z_sum)
    tl.store(part_f_ptr + part + 2, best)
    tl.store(part_f_ptr + part + 3, best_z)
    tl.store(part_i_ptr + part + 0, anchor)
    tl.store(part_i_ptr + part + 1, blk * BLOCK + arg)
    tl.store(hist_ptr + (row * num_blocks + blk) * NUM_BINS + tl.arange(0, NUM_BINS), hist)


@triton.jit
def _row_summary(
    row, num_blocks, part_f_ptr, part_i_ptr, hist_ptr, mode, top_k, top_p, log_min_p, n_top,
    NBLK_P2: tl.constexpr, NUM_BINS: tl.constexpr,
):
    """Merge a row's block summaries; pick the cut bin and count each block's candidates."""
    REST: tl.constexpr = NUM_BINS - 2
    blks = tl.arange(0, NBLK_P2)
    valid = blks < num_blocks
    part = (row * num_blocks + blks) * 4
    b_max = tl.load(part_f_ptr + part + 0, mask=valid, other=float("-inf"))
    b_sum = tl.load(part_f_ptr + part + 1, mask=valid, other=0.0)
    b_best = tl.load(part_f_ptr + part + 2, mask=valid, other=float("-inf"))
    b_best_z = tl.load(part_f_ptr + part + 3, mask=valid, other=float("-inf"))
    b_anchor = tl.load(part_i_ptr + part + 0, mask=valid, other=NO_ANCHOR)
    b_arg = tl.load(part_i_ptr + part + 1, mask=valid, other=0)

    m = tl.max(b_max, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(b_sum * tl.exp(b_max - m_safe), axis=0)
    best = tl.max(b_best, axis=0)
    win = tl.min(tl.where(b_best == best, blks, NBLK_P2), axis=0)
    token = tl.sum(tl.where(blks == win, b_arg, 0), axis=0)
    token_z = tl.sum(tl.where(blks == win, b_best_z, 0.0), axis=0)

    # Re-anchor every block histogram at the row's max bin: bin b of block i is bin b + shift_i.
    anchor = tl.where(m == float("-inf"), NO_ANCHOR, _bin_of(m))
    shift = anchor - b_anchor
    bins = tl.arange(0, NUM_BINS)
    rows_ptr = hist_ptr + (row * num_blocks + blks)[:, None] * NUM_BINS
    raw = tl.load(rows_ptr + bins[None, :], mask=valid[:, None], other=0)
    src = bins[None, :] - shift[:, None]
    moved = tl.load(rows_ptr + src, mask=valid[:, None] & (src >= 0) & (bins[None, :] < REST), other=0)
    low = tl.sum(moved, axis=0)
    n_finite = tl.sum(tl.sum(tl.where(bins[None, :] <= REST, raw, 0), axis=1), axis=0)
    hist = tl.where(bins == REST, n_finite - tl.sum(low, axis=0), low)

    usable = bins <= REST
    cum = tl.cumsum(hist, axis=0)
    # A token in bin j has exp(z - m) > exp(-(j + 1) / 4); one more bin of slack for rounding.
    weight = tl.where(bins < REST, tl.exp(-(bins + 2).to(tl.float32) * 0.25), 0.0)
    cum_mass_lb = tl.cumsum(hist.to(tl.float32) * weight, axis=0)
    j_k = tl.min(tl.where(usable & (cum >= top_k), bins, REST), axis=0)
    j_p = tl.min(tl.where(usable & (cum_mass_lb >= top_p * s), bins, REST), axis=0)
    j_min = tl.minimum(tl.maximum(anchor - _bin_of(m + log_min_p), 0), REST)
    j_kp = tl.minimum(tl.where(top_k > 0, j_k, REST), tl.where(top_p < 1.0, j_p, REST))
    min_p_on = log_min_p > float("-inf")
    j_filter = tl.minimum(j_kp, tl.where(min_p_on, j_min, REST))
    min_p_exact = (min_p_on & (j_min <= j_kp)).to(tl.int32)
    j_n = tl.min(tl.where(usable & (cum >= n_top), bins, REST), axis=0)
    cut = tl.where(mode == 2, j_filter, tl.where(n_top > 0, j_n, -1))

    in_cut = (bins[None, :] <= REST) & (tl.minimum(bins[None, :] + shift[:, None], REST) <= cut)
    blk_counts = tl.sum(tl.where(in_cut, raw, 0), axis=1)
    return m, s, anchor, cut, min_p_exact, token, token_z, blk_counts


@triton.jit
def _summary_kernel(
    fparams_ptr, iparams_ptr, part_f_ptr, part_i_ptr, hist_ptr, stats_f_ptr, stats_i_ptr, blk_cand_ptr, num_blocks,
    n_top, NUM_BINS: tl.constexpr, NBLK_P2: tl.constexpr,
):
    """Per row: merged statistics, the cut bin, and where each block's candidates go."""
    row = tl.program_id(0)
    temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
        fparams_ptr, iparams_ptr, row)
    m, s, anchor, cut, min_p_exact, token, token_z, blk_counts = _row_summary(
        row, num_blocks, part_f_ptr, part_i_ptr, hist_ptr, mode, top_k, top_p, log_min_p, n_top,
        NBLK_P2, NUM_BINS)
    blks = tl.arange(0, NBLK_P2)
    valid = blks < num_blocks
    tl.store(blk_cand_ptr + (row * num_blocks + blks) * 2 + 0, tl.cumsum(blk_counts, axis=0) - blk_counts,
             mask=valid)
    tl.store(blk_cand_ptr + (row * num_blocks + blks) * 2 + 1, blk_counts, mask=valid)
    tl.store(stats_f_ptr + row * 4 + 0, m)
    tl.store(stats_f_ptr + row * 4 + 1, s)
    tl.store(stats_f_ptr + row * 4 + 2, token_z)
    tl.store(stats_i_ptr + row * 8 + 0, tl.sum(blk_counts, axis=0))
    tl.store(stats_i_ptr + row * 8 + 1, cut)
    tl.store(stats_i_ptr + row * 8 + 2, min_p_exact)
    tl.store(stats_i_ptr + row * 8 + 3, token)
    tl.store(stats_i_ptr + row * 8 + 4, anchor)
