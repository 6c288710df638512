"""Triton sampler: penalties, temperature, top-k / top-p / min-p and seeded Gumbel-max
sampling for a mixed batch, without sorting the vocabulary.

Semantics (order of operations, tie rules, logprobs, noise) are those of
``kernels/sampling_ref.py``; this module only makes them fast. Four launches:

1. ``_block_stats_kernel``, one program per (row, 4096-token block), reads the
   logits once: processed logits ``z`` (penalties, bias, mask, temperature), the
   block's max and ``sum(exp(z - max))``, the greedy argmax (or, for sampled rows
   without filters, the Gumbel-max winner), the max of every 256-token sub-block,
   and a 64-bin histogram of ``z`` on a fixed 1/4-nat grid below the block max.
2. ``_summary_kernel``, one program per row, merges the block summaries (the
   histograms shift exactly since the grid is absolute) and picks a cut bin ``J``
   such that every token the filters can keep (or every top-n logprob token) lies
   in bins ``<= J``: by exact counts for top-k, by a lower bound on the mass for
   top-p, directly for min-p. Exact per-block candidate counts give each block its
   offset in the row's candidate buffer.
3. ``_compact_kernel``, one program per (row, block), copies its candidates there
   in token order, reading only the sub-blocks whose max reaches the cut.
4. ``_finalize_kernel``, one program per row, holds the (at most ``CAP``)
   candidates in registers, finds the exact threshold by multi-pivot bisection on
   the float bit pattern, draws Philox noise for the kept candidates only, and
   writes the token, its logprob and the top-n.

If the candidates overflow ``CAP`` (huge top_k, nearly flat distributions) or the
top-p mass bound proves too loose, the last kernel falls back to bisection by
passes over the row, skipping sub-blocks below the bracket: same result, slower.

Batch invariance: block sizes depend on the vocabulary only, every reduction of a
row happens in a fixed order inside its own programs, and the noise is a pure
function of (seed, position, token index). So a row's token does not depend on the
rest of the batch, its index, or CUDA-graph capture.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .sampling_ref import (
    PenaltyState,
    SampleResult,
    SamplingTensors,
    validate_sampling_tensors,
)

__all__ = ["PenaltyState", "SampleResult", "SamplingTensors", "philox_bits", "sample", "triton_available"]

NUM_BINS = 64  # histogram bins: 0..61 below the max bin, 62 = everything lower, 63 = -inf / padding
BLOCK = 2048  # tokens per pass-1 / pass-2 program
SUB = 256  # tokens per sub-block whose max is kept for skipping
CAP = 8192  # most candidates a row can hand to the finalize kernel
CHUNK = 512  # candidates the finalize kernel handles at a time
NPIV = 8  # pivots per bisection step
LOOP_BLOCK = 1024  # tokens per iteration of the fallback's passes over a row
NEG_INF_KEY = tl.constexpr(-2139095041)  # order key of -inf
NO_ANCHOR = tl.constexpr(-(2**30))  # anchor bin of a block with no finite logit
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device) -> bool:
    """Whether ``sample`` here can run on tensors on ``device``."""
    device = torch.device(device)
    return _INTERPRETED or (device.type == "cuda" and torch.cuda.is_available())


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _processed_logits(
    logits_ptr, row_stride, row, offs, live, vocab, temp,
    pen_row, seen_ptr, counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """Steps 1-3 of the reference for the tokens ``offs`` (``-inf`` where not ``live``).

    Divisions are IEEE-rounded (div_rn) and launches disable FMA contraction, so z is
    bit-identical to the torch reference.
    """
    row64 = row.to(tl.int64)
    x = tl.load(logits_ptr + row64 * row_stride + offs, mask=live, other=float("-inf")).to(tl.float32)
    if HAS_PEN:
        if pen_row >= 0:
            base = pen_row.to(tl.int64)
            word = tl.load(seen_ptr + base * num_words + (offs >> 5), mask=live, other=0)
            seen = ((word >> (offs & 31)) & 1) != 0
            count = tl.load(counts_ptr + base * vocab + offs, mask=live & seen, other=0)
            x = tl.where(seen, tl.where(x > 0, tl.math.div_rn(x, rep), x * rep), x)
            x = x - freq * count.to(tl.float32)
            x = tl.where(count > 0, x - pres, x)
    if HAS_BIAS:
        x = x + tl.load(bias_ptr + row64 * vocab + offs, mask=live, other=0.0)
    if HAS_MASK:
        allowed = tl.load(mask_ptr + row64 * vocab + offs, mask=live, other=0)
        x = tl.where(allowed != 0, x, float("-inf"))
    z = tl.math.div_rn(x, temp)
    return tl.where(live, z, float("-inf"))


@triton.jit
def _order_key(z):
    """int32 key ordered like the float32 values (-0.0 and +0.0 share key 0)."""
    bits = tl.where(z == 0.0, 0.0, z).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _key_to_float(key):
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.int32)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _bin_of(z):
    """Absolute bin of a finite z on the 1/4-nat grid."""
    return tl.floor(tl.minimum(tl.maximum(z, -1.0e8), 1.0e8) * 4.0).to(tl.int32)


@triton.jit
def _rel_bin(z, anchor, NUM_BINS: tl.constexpr):
    """Bins below the anchor bin, NUM_BINS-2 for all lower, NUM_BINS-1 for -inf (and NaN)."""
    rel = tl.minimum(tl.maximum(anchor - _bin_of(z), 0), NUM_BINS - 2)
    return tl.where((z == float("-inf")) | (z != z), NUM_BINS - 1, rel)


@triton.jit
def _noise_bits(seed, position, token):
    """32 random bits per token: Philox4x32-10 of (seed; token >> 2, position, 0, 0), output token & 3."""
    offset = (position.to(tl.int64) << 32) | (token >> 2).to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, offset)
    lane = token & 3
    return tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))


@triton.jit
def _noise_bits_block(seed, position, start, SIZE: tl.constexpr):
    """_noise_bits of tokens start..start+SIZE-1 at a quarter of the cost (start % 4 == 0)."""
    group = start // 4 + tl.arange(0, SIZE // 4)
    offset = (position.to(tl.int64) << 32) | group.to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, offset)
    # join stacks along a new last axis: [g, i, j] = (r0, r1 | r2, r3)[2 * i + j].
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [SIZE])


@triton.jit
def _gumbel_scores(z, bits):
    """``z - log(E)``: E = -log(1 - v) is exponential, v = (r + 0.5) * 2**-32."""
    v = (bits.to(tl.float32) + 0.5) * 2.3283064365386963e-10
    y = 1.0 - v
    # -log1p(-v) without cancellation: log(y) corrected by the exact ratio v / (1 - y).
    expo = tl.where(y == 1.0, v, -tl.log(y) * (v / (1.0 - y)))
    return z - tl.log(expo)


@triton.jit
def _load_row_params(fparams_ptr, iparams_ptr, row):
    f = fparams_ptr + row * 8
    i = iparams_ptr + row * 8
    return (
        tl.load(f + 0), tl.load(f + 1), tl.load(f + 2), tl.load(f + 3), tl.load(f + 4), tl.load(f + 5),
        tl.load(i + 0).to(tl.int32), tl.load(i + 1).to(tl.int32), tl.load(i + 2).to(tl.int32),
        tl.load(i + 3), tl.load(i + 4),
    )


# ----------------------------------------------------------------------------- pass 1


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


# ----------------------------------------------------------------------------- pass 2


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


# ----------------------------------------------------------------------------- pass 3 helpers


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
def _pivots(lo, hi, NPIV: tl.constexpr):
    """NPIV keys splitting the open bracket (lo, hi) evenly."""
    steps = (tl.arange(0, NPIV) + 1).to(tl.int64)
    return lo + ((hi - lo) * steps) // (NPIV + 1)


@triton.jit
def _narrow(lo, hi, pivots, n_above, mass_above, k_on, top_k, p_on, target):
    """Keep the bracket [lo, hi) with lo satisfying top-k or top-p and hi satisfying neither."""
    ok = tl.where(k_on, n_above >= top_k, False) | tl.where(p_on, mass_above >= target, False)
    return tl.max(tl.where(ok, pivots, lo), axis=0), tl.min(tl.where(ok, hi, pivots), axis=0)


@triton.jit
def _load_candidates(cand_val_ptr, cand_idx_ptr, row, start, count, m_safe, CAP: tl.constexpr, CH: tl.constexpr):
    slots = start + tl.arange(0, CH)
    live = slots < count
    vals = tl.load(cand_val_ptr + row * CAP + slots, mask=live, other=float("-inf"))
    idxs = tl.load(cand_idx_ptr + row * CAP + slots, mask=live, other=0)
    return slots, live, vals, idxs, _order_key(vals), tl.exp(vals - m_safe)


@triton.jit
def _candidates_above(pivots, cand_val_ptr, cand_idx_ptr, row, count, m_safe, NPIV: tl.constexpr,
                      CAP: tl.constexpr, CH: tl.constexpr):
    """Count and mass of the candidates with key >= each pivot."""
    n_above = tl.zeros([NPIV], tl.int32)
    mass_above = tl.zeros([NPIV], tl.float32)
    for start in range(0, count, CH):
        slots, live, vals, idxs, keys, expz = _load_candidates(
            cand_val_ptr, cand_idx_ptr, row, start, count, m_safe, CAP, CH)
        above = keys[:, None] >= pivots[None, :]
        n_above += tl.sum(above.to(tl.int32), axis=0)
        mass_above += tl.sum(tl.where(above, expz[:, None], 0.0), axis=0)
    return n_above, mass_above


@triton.jit
def _candidates_low_mass(cand_val_ptr, cand_idx_ptr, row, count, m_safe, CAP: tl.constexpr, CH: tl.constexpr):
    """Lowest key and total mass of the candidates."""
    low = 2147483647
    mass = 0.0
    for start in range(0, count, CH):
        slots, live, vals, idxs, keys, expz = _load_candidates(
            cand_val_ptr, cand_idx_ptr, row, start, count, m_safe, CAP, CH)
        low = tl.minimum(low, tl.min(tl.where(live, keys, 2147483647), axis=0))
        mass += tl.sum(expz, axis=0)
    return low, mass


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
def _row_above(
    pivots, m_safe, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr, counts_ptr, num_words,
    rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, NPIV: tl.constexpr,
    SIZE: tl.constexpr, SUB: tl.constexpr,
):
    """Count and mass of the row's finite tokens with key >= each pivot, by a pass over the row."""
    lanes = tl.arange(0, SIZE)
    lowest = tl.min(pivots, axis=0)
    n_above = tl.zeros([NPIV], tl.int32)
    mass_above = tl.zeros([NPIV], tl.float32)
    for start in range(0, vocab, SIZE):
        offs = start + lanes
        inb = offs < vocab
        sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
        live = inb & (_order_key(sub_max) >= lowest) & (sub_max > float("-inf"))
        if tl.max(live.to(tl.int32), axis=0) > 0:
            z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                  counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                  HAS_PEN, HAS_BIAS, HAS_MASK)
            above = (live & (z > float("-inf")))[:, None] & (_order_key(z)[:, None] >= pivots[None, :])
            n_above += tl.sum(above.to(tl.int32), axis=0)
            mass_above += tl.sum(tl.where(above, tl.exp(z - m_safe)[:, None], 0.0), axis=0)
    return n_above, mass_above


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


# ----------------------------------------------------------------------------- pass 3


@triton.jit
def _finalize_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, stats_f_ptr, stats_i_ptr, cand_val_ptr, cand_idx_ptr,
    token_ptr, logprob_ptr, top_id_ptr, top_lp_ptr, tau_ptr, vocab, num_sub, n_top,
    CAP: tl.constexpr, CH: tl.constexpr, NPIV: tl.constexpr, WANT_LP: tl.constexpr, HAS_TOP: tl.constexpr,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    SIZE: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    row = tl.program_id(0)
    temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
        fparams_ptr, iparams_ptr, row)
    m = tl.load(stats_f_ptr + row * 4 + 0)
    s = tl.load(stats_f_ptr + row * 4 + 1)
    token_z = tl.load(stats_f_ptr + row * 4 + 2)
    count = tl.load(stats_i_ptr + row * 8 + 0)
    cut = tl.load(stats_i_ptr + row * 8 + 1)
    min_p_exact = tl.load(stats_i_ptr + row * 8 + 2)
    token = tl.load(stats_i_ptr + row * 8 + 3)
    m_safe = tl.where(m == float("-inf"), 0.0, m)

    use_cands = (cut >= 0) & (count <= CAP)
    key_lo = tl.full([], NEG_INF_KEY, tl.int64)
    min_z = float("-inf")
    mass = s
    if mode == 2:
        k_on = top_k > 0
        p_on = top_p < 1.0
        target = top_p * s
        min_z = m + log_min_p
        high = _order_key(m).to(tl.int64) + 1
        usable = False
        if use_cands:
            # The candidates bracket the top-k/top-p threshold if the lowest one satisfies a
            # filter; they hold every kept token anyway if they are all finite tokens, or
            # exactly the min-p set, or top-k and top-p are off.
            low, total = _candidates_low_mass(cand_val_ptr, cand_idx_ptr, row, count, m_safe, CAP, CH)
            holds_low = (k_on & (count >= top_k)) | (p_on & (total >= target))
            usable = holds_low | (cut >= NUM_BINS - 2) | (min_p_exact != 0) | ~(k_on | p_on)
            if holds_low & (k_on | p_on):
                lo = low.to(tl.int64)
                hi = high
                while hi - lo > 1:
                    pivots = _pivots(lo, hi, NPIV)
                    n_above, mass_above = _candidates_above(
                        pivots, cand_val_ptr, cand_idx_ptr, row, count, m_safe, NPIV, CAP, CH)
                    lo, hi = _narrow(lo, hi, pivots, n_above, mass_above, k_on, top_k, p_on, target)
                key_lo = lo
        if usable:
            token, token_z, mass = _sample_candidates(
                key_lo, min_z, seed, position, cand_val_ptr, cand_idx_ptr, row, count, m_safe, CAP, CH)
        else:
            # Fallback: bracket the threshold by passes over the whole row.
            use_cands = False
            lo = tl.full([], NEG_INF_KEY, tl.int64)
            hi = high
            while hi - lo > 1:
                pivots = _pivots(lo, hi, NPIV)
                n_above, mass_above = _row_above(
                    pivots, m_safe, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr, counts_ptr,
                    num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                    HAS_PEN, HAS_BIAS, HAS_MASK, NPIV, SIZE, SUB)
                lo, hi = _narrow(lo, hi, pivots, n_above, mass_above, k_on, top_k, p_on, target)
            key_lo = lo
            token, token_z, mass = _sample_full_row(
                key_lo, min_z, m_safe, seed, position, logits_ptr, row_stride, row, vocab, temp, pen_row,
                seen_ptr, counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                HAS_PEN, HAS_BIAS, HAS_MASK, SIZE, SUB)

    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(tau_ptr + row, tl.maximum(_key_to_float(key_lo), min_z))
    log_norm = m_safe + tl.log(mass)
    if WANT_LP:
        tl.store(logprob_ptr + row, token_z - log_norm)
    if HAS_TOP:
        if use_cands:
            _top_candidates(n_top, key_lo, min_z, log_norm, top_id_ptr + row * n_top, top_lp_ptr + row * n_top,
                            cand_val_ptr, cand_idx_ptr, row, count, m_safe, CAP, CH)
        else:
            _top_full_row(n_top, key_lo, min_z, log_norm, top_id_ptr + row * n_top, top_lp_ptr + row * n_top,
                          logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr, counts_ptr, num_words,
                          rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                          HAS_PEN, HAS_BIAS, HAS_MASK, SIZE, SUB)


# ----------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class _Config:
    block: int
    sub: int
    num_blocks: int
    num_sub: int
    cap: int
    loop_block: int


def _config(vocab: int, cap: int) -> _Config:
    """Launch shapes: a function of the vocabulary only, so results never depend on the batch."""
    block = min(BLOCK, max(16, triton.next_power_of_2(vocab)))
    sub = min(SUB, block)
    cap = min(cap, max(16, triton.next_power_of_2(vocab)))
    return _Config(block, sub, triton.cdiv(vocab, block), triton.cdiv(vocab, sub), cap, min(LOOP_BLOCK, block))


def _warps(size: int) -> int:
    return 8 if size >= 2048 else 4


def _row_params(params: SamplingTensors, penalties: PenaltyState | None, vocab: int) -> tuple[Tensor, Tensor]:
    """Pack per-row parameters: float32 [B, 8] and int64 [B, 8] (see _load_row_params)."""
    temp = params.temperature.float()
    greedy = temp == 0
    top_k = params.top_k.long()
    top_k = torch.where((top_k > 0) & (top_k < vocab), top_k, 0)
    top_p = params.top_p.float()
    min_p = params.min_p.float()
    log_min_p = torch.where(min_p > 0, torch.log(min_p), -math.inf)
    filtered = (top_k > 0) | (top_p < 1) | (min_p > 0)
    mode = torch.where(greedy, 0, torch.where(filtered, 2, 1))  # greedy / sampled / sampled + filters
    rep = params.repetition_penalty.float()
    freq = params.frequency_penalty.float()
    pres = params.presence_penalty.float()
    pen_row = torch.full_like(top_k, -1)
    if penalties is not None and params.penalty_rows is not None:
        active = (rep != 1) | (freq != 0) | (pres != 0)
        pen_row = torch.where(active, params.penalty_rows.long(), -1)
    zero_f = torch.zeros_like(temp)
    fparams = torch.stack([torch.where(greedy, 1.0, temp), top_p, log_min_p, rep, freq, pres, zero_f, zero_f], 1)
    zero_i = torch.zeros_like(top_k)
    iparams = torch.stack(
        [mode, top_k, pen_row, params.seed.long(), params.position.long(), zero_i, zero_i, zero_i], 1)
    return fparams.contiguous(), iparams.contiguous()


def sample(
    logits: Tensor,
    params: SamplingTensors,
    penalties: PenaltyState | None = None,
    num_logprobs: int | None = None,
    *,
    validate: bool = True,
) -> SampleResult:
    """Sample one token per row of ``logits`` [B, V]; same contract as ``sampling_ref.sample``.

    ``validate=False`` skips the value checks (one host sync), e.g. inside CUDA graphs.
    """
    return _sample(logits, params, penalties, num_logprobs, validate=validate)[0]


def _sample(
    logits: Tensor,
    params: SamplingTensors,
    penalties: PenaltyState | None,
    num_logprobs: int | None,
    *,
    validate: bool = True,
    cap: int = CAP,
) -> tuple[SampleResult, Tensor]:
    """``sample`` plus each row's filter threshold ``tau`` (kept = finite z >= tau), for tests."""
    if validate:
        validate_sampling_tensors(logits, params, penalties, num_logprobs)
    batch, vocab = logits.shape
    device = logits.device
    n_top = num_logprobs or 0
    cfg = _config(vocab, cap)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    has_pen = penalties is not None and params.penalty_rows is not None
    has_bias = params.logit_bias is not None
    has_mask = params.allowed_mask is not None
    fparams, iparams = _row_params(params, penalties, vocab)
    seen = penalties.seen_bits if has_pen else fparams
    counts = penalties.counts if has_pen else fparams
    num_words = penalties.num_words if has_pen else 0
    bias = params.logit_bias.float().contiguous() if has_bias else fparams
    mask = params.allowed_mask.contiguous() if has_mask else fparams

    def empty(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device=device)

    submax = empty(batch, cfg.num_sub)
    part_f, part_i = empty(batch, cfg.num_blocks, 4), empty(batch, cfg.num_blocks, 4, dtype=torch.int32)
    hist = empty(batch, cfg.num_blocks, NUM_BINS, dtype=torch.int32)
    stats_f, stats_i = empty(batch, 4), empty(batch, 8, dtype=torch.int32)
    blk_cand = empty(batch, cfg.num_blocks, 2, dtype=torch.int32)
    cand_val, cand_idx = empty(batch, cfg.cap), empty(batch, cfg.cap, dtype=torch.int32)
    token_ids, logprobs, tau = empty(batch, dtype=torch.int64), empty(batch), empty(batch)
    top_ids, top_lp = empty(batch, n_top, dtype=torch.int64), empty(batch, n_top)
    if batch > 0:
        inputs = (logits, logits.stride(0), fparams, iparams, seen, counts, num_words, bias, mask, submax)
        flags = dict(HAS_PEN=has_pen, HAS_BIAS=has_bias, HAS_MASK=has_mask, SUB=cfg.sub, NUM_BINS=NUM_BINS,
                     enable_fp_fusion=False)
        per_block = (batch, cfg.num_blocks)
        _block_stats_kernel[per_block](
            *inputs, part_f, part_i, hist, vocab, cfg.num_sub, cfg.num_blocks,
            BLOCK=cfg.block, num_warps=_warps(cfg.block), **flags)
        _summary_kernel[(batch,)](
            fparams, iparams, part_f, part_i, hist, stats_f, stats_i, blk_cand, cfg.num_blocks, n_top,
            NUM_BINS=NUM_BINS, NBLK_P2=triton.next_power_of_2(cfg.num_blocks), num_warps=8,
            enable_fp_fusion=False)
        _compact_kernel[per_block](
            *inputs, stats_i, blk_cand, cand_val, cand_idx, vocab, cfg.num_sub, cfg.num_blocks,
            CAP=cfg.cap, BLOCK=cfg.block, num_warps=_warps(cfg.block), **flags)
        _finalize_kernel[(batch,)](
            *inputs, stats_f, stats_i, cand_val, cand_idx, token_ids, logprobs, top_ids, top_lp, tau,
            vocab, cfg.num_sub, n_top, CAP=cfg.cap, CH=min(CHUNK, cfg.cap), NPIV=NPIV,
            WANT_LP=num_logprobs is not None, HAS_TOP=n_top > 0, SIZE=cfg.loop_block, num_warps=4, **flags)
    return _result(token_ids, logprobs, top_ids, top_lp, num_logprobs), tau


def _result(token_ids, logprobs, top_ids, top_lp, num_logprobs) -> SampleResult:
    if num_logprobs is None:
        return SampleResult(token_ids, None, None, None)
    if num_logprobs == 0:
        return SampleResult(token_ids, logprobs, None, None)
    return SampleResult(token_ids, logprobs, top_ids, top_lp)


# ----------------------------------------------------------------------------- noise check


@triton.jit
def _philox_bits_kernel(seed_ptr, position_ptr, token_ptr, out_ptr, n, SIZE: tl.constexpr, CONTIGUOUS: tl.constexpr):
    start = tl.program_id(0) * SIZE
    offs = start + tl.arange(0, SIZE)
    live = offs < n
    seed = tl.load(seed_ptr)
    position = tl.load(position_ptr)
    if CONTIGUOUS:
        bits = _noise_bits_block(seed, position, start, SIZE)
    else:
        bits = _noise_bits(seed, position, tl.load(token_ptr + offs, mask=live, other=0))
    tl.store(out_ptr + offs, bits.to(tl.int64) & 0xFFFFFFFF, mask=live)


def philox_bits(seed: int, position: int, tokens: Tensor | int, *, device=None) -> Tensor:
    """The kernel's 32 random bits (int64) for one (seed, position): of the int32 ``tokens``,
    or of tokens 0..tokens-1 through the block path when ``tokens`` is an int."""
    contiguous = isinstance(tokens, int)
    n = tokens if contiguous else tokens.numel()
    device = device if contiguous else tokens.device
    token_arg = torch.zeros(1, dtype=torch.int32, device=device) if contiguous else tokens.int().contiguous()
    out = torch.empty(n, dtype=torch.int64, device=device)
    size = 256
    _philox_bits_kernel[(triton.cdiv(n, size),)](
        torch.tensor([seed], dtype=torch.int64, device=device),
        torch.tensor([position], dtype=torch.int64, device=device),
        token_arg, out, n, SIZE=size, CONTIGUOUS=contiguous)
    return out
