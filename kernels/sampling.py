"""Triton sampler: penalties, temperature, top-k / top-p / min-p and seeded Gumbel-max
sampling for a mixed batch, without sorting the vocabulary.

Semantics (order of operations, tie rules, logprobs, noise) are those of
``kernels/sampling_ref.py``; this module only makes them fast. One program per row,
three launches:

1. ``_stats_kernel`` reads the row once: processed logits ``z``, their max ``m`` and
   ``s = sum(exp(z - m))``, the greedy argmax (or, for sampled rows without filters,
   the Gumbel-max winner), the max of every 256-token sub-block, and a 64-bin
   histogram of ``z`` on a fixed 1/4-nat grid below the max. From the histogram it
   picks a cut bin ``J`` such that every token the filters can keep (or the top-n
   logprob tokens) lies in bins ``<= J``: by exact counts for top-k, by a lower
   bound on the mass for top-p, directly for min-p.
2. ``_compact_kernel`` copies the tokens in bins ``<= J`` (at most ``CAP``) to a
   scratch buffer, reading only the sub-blocks whose max lies in those bins.
3. ``_finalize_kernel`` finds the exact threshold by bisection on the float's bit
   pattern over the candidates held in registers, draws Philox noise for the kept
   candidates only, and writes the token, its logprob and the top-n.

If the candidates overflow ``CAP`` (huge top_k, nearly flat distributions) or the
histogram bound proves too loose, the last kernel falls back to bisection by
passes over the whole row, skipping sub-blocks below the bracket. Same result,
slower.

Batch invariance: every row is reduced by one program in a fixed order with block
sizes that depend on the vocabulary only, and its noise is a pure function of
(seed, position, token index), so a row's token does not depend on the rest of
the batch, its index, or CUDA-graph capture.
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

__all__ = ["PenaltyState", "SampleResult", "SamplingTensors", "sample", "triton_available", "philox_bits"]

NUM_BINS = 64  # histogram bins: 0..61 window below the max, 62 = everything lower, 63 = -inf / padding
BINS_PER_NAT = 4.0
CAP = 4096  # most candidates held in registers by the finalize kernel
SUB = 256  # tokens per sub-block whose max is recorded for skipping
NEG_INF_KEY = tl.constexpr(-2139095041)  # _order_key(-inf)
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
    """Steps 1-3 of the reference for the tokens ``offs`` (``-inf`` where not ``live``)."""
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
        x = x + tl.load(bias_ptr + row64 * vocab + offs, mask=live, other=0.0).to(tl.float32)
    if HAS_MASK:
        allowed = tl.load(mask_ptr + row64 * vocab + offs, mask=live, other=0)
        x = tl.where(allowed != 0, x, float("-inf"))
    z = tl.math.div_rn(x, temp)
    return tl.where(live, z, float("-inf"))


@triton.jit
def _order_key(z):
    """int32 key with the order of the float32 values (-0.0 and +0.0 share key 0)."""
    bits = tl.where(z == 0.0, 0.0, z).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _key_to_float(key):
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.int32)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _bin_of(z):
    """Absolute bin of z on a 1/BINS_PER_NAT grid (finite z)."""
    clamped = tl.minimum(tl.maximum(z, -1.0e8), 1.0e8)
    return tl.floor(clamped * 4.0).to(tl.int32)


@triton.jit
def _rel_bin(z, anchor, NUM_BINS: tl.constexpr):
    """Bins below the anchor (max) bin; NUM_BINS-2 collects the rest, NUM_BINS-1 is -inf."""
    rel = tl.minimum(anchor - _bin_of(z), NUM_BINS - 2)
    return tl.where(z == float("-inf"), NUM_BINS - 1, rel)


@triton.jit
def _noise_bits(seed, position, token):
    """32 random bits per token: Philox4x32-10 of (seed; token >> 2, position, 0, 0), lane token & 3."""
    offset = (position.to(tl.int64) << 32) | (token >> 2).to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, offset)
    lane = token & 3
    return tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))


@triton.jit
def _noise_bits_block(seed, position, start, BLOCK: tl.constexpr):
    """_noise_bits for tokens start..start+BLOCK-1 at a quarter of the cost (start % 4 == 0)."""
    group = start // 4 + tl.arange(0, BLOCK // 4)
    offset = (position.to(tl.int64) << 32) | group.to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, offset)
    return tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [BLOCK])


@triton.jit
def _gumbel_scores(z, bits):
    """``z - log(E)``, E = -log(1 - v) exponential, v = (r + 0.5) * 2**-32."""
    v = (bits.to(tl.float32) + 0.5) * 2.3283064365386963e-10
    y = 1.0 - v
    # -log1p(-v) without cancellation (Goldberg): exact ratio correction of log(y).
    expo = tl.where(y == 1.0, v, -tl.log(y) * (v / (1.0 - y)))
    return z - tl.log(expo)


@triton.jit
def _shift_hist(hist, shift, NUM_BINS: tl.constexpr):
    """Re-anchor the histogram ``shift`` bins lower (the max went up)."""
    src = tl.arange(0, NUM_BINS)
    dest = tl.where(src == NUM_BINS - 1, NUM_BINS - 1, tl.minimum(src + shift, NUM_BINS - 2))
    hit = dest[:, None] == tl.arange(0, NUM_BINS)[None, :]
    return tl.sum(tl.where(hit, hist[:, None], 0), axis=0)


@triton.jit
def _load_row_params(fparams_ptr, iparams_ptr, row):
    f = fparams_ptr + row * 8
    i = iparams_ptr + row * 8
    temp = tl.load(f + 0)
    top_p = tl.load(f + 1)
    log_min_p = tl.load(f + 2)
    rep = tl.load(f + 3)
    freq = tl.load(f + 4)
    pres = tl.load(f + 5)
    mode = tl.load(i + 0).to(tl.int32)
    top_k = tl.load(i + 1).to(tl.int32)
    pen_row = tl.load(i + 2).to(tl.int32)
    seed = tl.load(i + 3)
    position = tl.load(i + 4)
    return temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position


# ----------------------------------------------------------------------------- pass 1


@triton.jit
def _stats_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, stats_f_ptr, stats_i_ptr, vocab, num_sub,
    N_TOP: tl.constexpr, HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    row = tl.program_id(0)
    temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
        fparams_ptr, iparams_ptr, row)
    lanes = tl.arange(0, BLOCK)
    m_run = float("-inf")
    s_run = 0.0
    anchor = -(2**30)
    hist = tl.zeros([NUM_BINS], tl.int32)
    best = float("-inf")
    best_idx = 0
    best_z = float("-inf")
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        inb = offs < vocab
        z = _processed_logits(logits_ptr, row_stride, row, offs, inb, vocab, temp, pen_row, seen_ptr, counts_ptr,
                              num_words, rep, freq, pres, bias_ptr, mask_ptr, HAS_PEN, HAS_BIAS, HAS_MASK)
        sub_ids = start // SUB + tl.arange(0, BLOCK // SUB)
        sub_max = tl.max(tl.reshape(z, [BLOCK // SUB, SUB]), axis=1)
        tl.store(submax_ptr + row * num_sub + sub_ids, sub_max, mask=sub_ids < num_sub)

        # Greedy rows: argmax of z; unfiltered sampled rows: Gumbel-max over the whole row.
        if mode == 1:
            score = _gumbel_scores(z, _noise_bits_block(seed, position, start, BLOCK))
        else:
            score = z
        blk_best = tl.max(score, axis=0)
        blk_arg = tl.argmax(score, axis=0)
        better = blk_best > best
        best_z = tl.where(better, tl.sum(tl.where(lanes == blk_arg, z, 0.0), axis=0), best_z)
        best_idx = tl.where(better, start + blk_arg, best_idx)
        best = tl.where(better, blk_best, best)

        m_new = tl.maximum(m_run, tl.max(z, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_run = s_run * tl.exp(m_run - m_safe) + tl.sum(tl.exp(z - m_safe), axis=0)
        new_anchor = tl.where(m_new == float("-inf"), anchor, _bin_of(m_new))
        if new_anchor > anchor:
            hist = _shift_hist(hist, new_anchor - anchor, NUM_BINS)
        anchor = new_anchor
        hist += tl.histogram(_rel_bin(z, anchor, NUM_BINS), NUM_BINS)
        m_run = m_new

    # Cut bin J: all tokens the filters may keep lie in bins <= J.
    REST: tl.constexpr = NUM_BINS - 2
    bins = tl.arange(0, NUM_BINS)
    usable = bins <= REST
    cum = tl.cumsum(hist, axis=0)
    # A token in bin j has exp(z - m) > exp(-(j + 1) / 4); one more bin of slack for rounding.
    weight = tl.where(bins < REST, tl.exp(-(bins + 2).to(tl.float32) / 4.0), 0.0)
    cum_mass_lb = tl.cumsum(hist.to(tl.float32) * weight, axis=0)
    j_k = tl.min(tl.where(usable & (cum >= top_k), bins, REST), axis=0)
    j_p = tl.min(tl.where(usable & (cum_mass_lb >= top_p * s_run), bins, REST), axis=0)
    j_n = tl.min(tl.where(usable & (cum >= N_TOP), bins, REST), axis=0)
    j_min = tl.minimum(tl.maximum(anchor - _bin_of(m_run + log_min_p), 0), REST)
    j_kp = tl.minimum(tl.where(top_k > 0, j_k, REST), tl.where(top_p < 1.0, j_p, REST))
    min_p_on = log_min_p > float("-inf")
    j_filter = tl.minimum(j_kp, tl.where(min_p_on, j_min, REST))
    min_p_exact = (min_p_on & (j_min <= j_kp)).to(tl.int32)
    if N_TOP > 0:
        cut = tl.where(mode == 2, j_filter, j_n)
    else:
        cut = tl.where(mode == 2, j_filter, -1)

    tl.store(stats_f_ptr + row * 4 + 0, m_run)
    tl.store(stats_f_ptr + row * 4 + 1, s_run)
    tl.store(stats_f_ptr + row * 4 + 2, best_z)
    tl.store(stats_i_ptr + row * 4 + 0, anchor)
    tl.store(stats_i_ptr + row * 4 + 1, cut)
    tl.store(stats_i_ptr + row * 4 + 2, min_p_exact)
    tl.store(stats_i_ptr + row * 4 + 3, best_idx)


# ----------------------------------------------------------------------------- pass 2


@triton.jit
def _compact_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, stats_i_ptr, cand_val_ptr, cand_idx_ptr, cand_cnt_ptr, vocab, num_sub,
    CAP: tl.constexpr, HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    """Copy the tokens in bins <= J, in token order, to the row's candidate buffer."""
    row = tl.program_id(0)
    anchor = tl.load(stats_i_ptr + row * 4 + 0)
    cut = tl.load(stats_i_ptr + row * 4 + 1)
    count = 0
    if cut >= 0:
        temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
            fparams_ptr, iparams_ptr, row)
        lanes = tl.arange(0, BLOCK)
        for start in range(0, vocab, BLOCK):
            offs = start + lanes
            inb = offs < vocab
            sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
            live = inb & (_rel_bin(sub_max, anchor, NUM_BINS) <= cut)
            if tl.max(live.to(tl.int32), axis=0) > 0:
                z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                      counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                      HAS_PEN, HAS_BIAS, HAS_MASK)
                is_cand = live & (_rel_bin(z, anchor, NUM_BINS) <= cut)
                flag = is_cand.to(tl.int32)
                slot = count + tl.cumsum(flag, axis=0) - flag
                store = is_cand & (slot < CAP)
                tl.store(cand_val_ptr + row * CAP + slot, z, mask=store)
                tl.store(cand_idx_ptr + row * CAP + slot, offs, mask=store)
                count += tl.sum(flag, axis=0)
    tl.store(cand_cnt_ptr + row, count)


# ----------------------------------------------------------------------------- pass 3


@triton.jit
def _count_mass_above(
    key_lo, min_z, m_safe, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr, counts_ptr, num_words,
    rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr,
):
    """Count and ``sum(exp(z - m))`` of the finite tokens with key >= key_lo and z >= min_z (full row)."""
    lanes = tl.arange(0, BLOCK)
    count = 0
    mass = 0.0
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        inb = offs < vocab
        sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
        live = inb & (_order_key(sub_max) >= key_lo) & (sub_max >= min_z) & (sub_max > float("-inf"))
        if tl.max(live.to(tl.int32), axis=0) > 0:
            z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                  counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                  HAS_PEN, HAS_BIAS, HAS_MASK)
            hit = live & (_order_key(z) >= key_lo) & (z >= min_z) & (z > float("-inf"))
            count += tl.sum(hit.to(tl.int32), axis=0)
            mass += tl.sum(tl.where(hit, tl.exp(z - m_safe), 0.0), axis=0)
    return count, mass


@triton.jit
def _sample_full_row(
    key_lo, min_z, m_safe, seed, position, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr,
    counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr,
):
    """Gumbel-max over the kept tokens of the whole row; returns (token, its z, kept mass)."""
    lanes = tl.arange(0, BLOCK)
    best = float("-inf")
    best_idx = 0
    best_z = float("-inf")
    mass = 0.0
    for start in range(0, vocab, BLOCK):
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
            score = tl.where(kept, _gumbel_scores(z, _noise_bits_block(seed, position, start, BLOCK)),
                             float("-inf"))
            blk_best = tl.max(score, axis=0)
            blk_arg = tl.argmax(score, axis=0)
            better = blk_best > best
            best_z = tl.where(better, tl.sum(tl.where(lanes == blk_arg, z, 0.0), axis=0), best_z)
            best_idx = tl.where(better, start + blk_arg, best_idx)
            best = tl.where(better, blk_best, best)
    return best_idx, best_z, mass


@triton.jit
def _top_full_row(
    key_lo, min_z, log_norm, top_id_ptr, top_lp_ptr, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr,
    counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
    N_TOP: tl.constexpr, HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr,
):
    """Top-n kept tokens by n passes over the row, each taking the next (value desc, index asc)."""
    lanes = tl.arange(0, BLOCK)
    prev_key = 2147483647
    prev_idx = -1
    for i in tl.static_range(N_TOP):
        best_key = -2147483648
        best_idx = -1
        best_z = float("-inf")
        for start in range(0, vocab, BLOCK):
            offs = start + lanes
            inb = offs < vocab
            sub_max = tl.load(submax_ptr + row * num_sub + offs // SUB, mask=inb, other=float("-inf"))
            live = inb & (_order_key(sub_max) >= key_lo) & (sub_max >= min_z) & (sub_max > float("-inf"))
            if tl.max(live.to(tl.int32), axis=0) > 0:
                z = _processed_logits(logits_ptr, row_stride, row, offs, live, vocab, temp, pen_row, seen_ptr,
                                      counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr,
                                      HAS_PEN, HAS_BIAS, HAS_MASK)
                key = _order_key(z)
                ok = live & (key >= key_lo) & (z >= min_z) & (z > float("-inf"))
                ok = ok & ((key < prev_key) | ((key == prev_key) & (offs > prev_idx)))
                key = tl.where(ok, key, -2147483648)
                blk_key = tl.max(key, axis=0)
                blk_idx = tl.min(tl.where(ok & (key == blk_key), offs, 2147483647), axis=0)
                better = (tl.max(ok.to(tl.int32), axis=0) > 0) & (blk_key > best_key)
                best_z = tl.where(better, tl.sum(tl.where(offs == blk_idx, z, 0.0), axis=0), best_z)
                best_idx = tl.where(better, blk_idx, best_idx)
                best_key = tl.where(better, blk_key, best_key)
        found = best_idx >= 0
        tl.store(top_id_ptr + i, tl.where(found, best_idx, -1).to(tl.int64))
        tl.store(top_lp_ptr + i, tl.where(found, best_z - log_norm, float("-inf")))
        prev_key = best_key
        prev_idx = best_idx


@triton.jit
def _finalize_kernel(
    logits_ptr, row_stride, fparams_ptr, iparams_ptr, seen_ptr, counts_ptr, num_words, bias_ptr, mask_ptr,
    submax_ptr, stats_f_ptr, stats_i_ptr, cand_val_ptr, cand_idx_ptr, cand_cnt_ptr,
    token_ptr, logprob_ptr, top_id_ptr, top_lp_ptr, tau_ptr, vocab, num_sub,
    CAP: tl.constexpr, N_TOP: tl.constexpr, WANT_LP: tl.constexpr,
    HAS_PEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, SUB: tl.constexpr, NUM_BINS: tl.constexpr,
):
    row = tl.program_id(0)
    temp, top_p, log_min_p, rep, freq, pres, mode, top_k, pen_row, seed, position = _load_row_params(
        fparams_ptr, iparams_ptr, row)
    m = tl.load(stats_f_ptr + row * 4 + 0)
    s = tl.load(stats_f_ptr + row * 4 + 1)
    token_z = tl.load(stats_f_ptr + row * 4 + 2)
    cut = tl.load(stats_i_ptr + row * 4 + 1)
    min_p_exact = tl.load(stats_i_ptr + row * 4 + 2)
    token = tl.load(stats_i_ptr + row * 4 + 3)
    m_safe = tl.where(m == float("-inf"), 0.0, m)

    count = tl.load(cand_cnt_ptr + row)
    fits = (cut >= 0) & (count <= CAP)
    slots = tl.arange(0, CAP)
    in_buf = slots < tl.where(fits, count, 0)
    vals = tl.load(cand_val_ptr + row * CAP + slots, mask=in_buf, other=float("-inf"))
    idxs = tl.load(cand_idx_ptr + row * CAP + slots, mask=in_buf, other=0)
    keys = _order_key(vals)
    expz = tl.exp(vals - m_safe)

    key_lo = tl.full([], NEG_INF_KEY, tl.int64)
    min_z = float("-inf")
    mass = s
    cands_ok = fits
    if mode == 2:
        k_on = top_k > 0
        p_on = top_p < 1.0
        target = top_p * s
        min_z = m + log_min_p
        low_key = tl.min(tl.where(in_buf, keys, 2147483647), axis=0)
        holds_low = (k_on & (count >= top_k)) | (p_on & (tl.sum(expz, axis=0) >= target))
        complete = cut >= NUM_BINS - 2
        cands_ok = fits & (holds_low | complete | (min_p_exact != 0) | ~(k_on | p_on))
        if cands_ok:
            if holds_low & (k_on | p_on):
                lo = low_key.to(tl.int64)
                hi = _order_key(m).to(tl.int64) + 1
                while hi - lo > 1:
                    mid = (lo + hi) >> 1
                    above = keys >= mid
                    ok = (k_on & (tl.sum(above.to(tl.int32), axis=0) >= top_k)) | (
                        p_on & (tl.sum(tl.where(above, expz, 0.0), axis=0) >= target))
                    lo = tl.where(ok, mid, lo)
                    hi = tl.where(ok, hi, mid)
                key_lo = lo
            kept = in_buf & (keys >= key_lo) & (vals >= min_z) & (vals > float("-inf"))
            mass = tl.sum(tl.where(kept, expz, 0.0), axis=0)
            score = tl.where(kept, _gumbel_scores(vals, _noise_bits(seed, position, idxs)), float("-inf"))
            win = tl.argmax(score, axis=0)
            token = tl.sum(tl.where(slots == win, idxs, 0), axis=0)
            token_z = tl.sum(tl.where(slots == win, vals, 0.0), axis=0)
        else:
            lo = tl.full([], NEG_INF_KEY, tl.int64)
            hi = _order_key(m).to(tl.int64) + 1
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                n_above, mass_above = _count_mass_above(
                    mid, float("-inf"), m_safe, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr,
                    counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                    HAS_PEN, HAS_BIAS, HAS_MASK, BLOCK, SUB)
                ok = (k_on & (n_above >= top_k)) | (p_on & (mass_above >= target))
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid)
            key_lo = lo
            token, token_z, mass = _sample_full_row(
                key_lo, min_z, m_safe, seed, position, logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr,
                counts_ptr, num_words, rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                HAS_PEN, HAS_BIAS, HAS_MASK, BLOCK, SUB)

    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(tau_ptr + row, tl.maximum(_key_to_float(key_lo), min_z))
    log_norm = m_safe + tl.log(mass)
    if WANT_LP:
        tl.store(logprob_ptr + row, token_z - log_norm)
    if N_TOP > 0:
        if cands_ok:
            left = in_buf & (keys >= key_lo) & (vals >= min_z) & (vals > float("-inf"))
            for i in tl.static_range(N_TOP):
                pick = tl.argmax(tl.where(left, vals, float("-inf")), axis=0)
                found = tl.sum(tl.where(slots == pick, left.to(tl.int32), 0), axis=0) > 0
                pick_id = tl.sum(tl.where(slots == pick, idxs, 0), axis=0)
                pick_z = tl.sum(tl.where(slots == pick, vals, 0.0), axis=0)
                tl.store(top_id_ptr + row * N_TOP + i, tl.where(found, pick_id, -1).to(tl.int64))
                tl.store(top_lp_ptr + row * N_TOP + i, tl.where(found, pick_z - log_norm, float("-inf")))
                left = left & (slots != pick)
        else:
            _top_full_row(key_lo, min_z, log_norm, top_id_ptr + row * N_TOP, top_lp_ptr + row * N_TOP,
                          logits_ptr, row_stride, row, vocab, temp, pen_row, seen_ptr, counts_ptr, num_words,
                          rep, freq, pres, bias_ptr, mask_ptr, submax_ptr, num_sub,
                          N_TOP, HAS_PEN, HAS_BIAS, HAS_MASK, BLOCK, SUB)


# ----------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class _Config:
    block: int
    sub: int
    num_sub: int
    cap: int
    num_warps: int


def _config(vocab: int, cap: int) -> _Config:
    """Launch shapes: a function of the vocabulary only, so results never depend on the batch."""
    block = min(2048, max(16, triton.next_power_of_2(vocab)))
    sub = min(SUB, block)
    cap = min(cap, max(16, triton.next_power_of_2(vocab)))
    return _Config(block, sub, triton.cdiv(vocab, sub), cap, 8 if block >= 1024 else 4)


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
    mode = torch.where(greedy, 0, torch.where(filtered, 2, 1))
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
    """Sample one token per row of ``logits`` [B, V]; same contract as ``sampling_ref.sample``."""
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

    submax = torch.empty(batch, cfg.num_sub, dtype=torch.float32, device=device)
    stats_f = torch.empty(batch, 4, dtype=torch.float32, device=device)
    stats_i = torch.empty(batch, 4, dtype=torch.int32, device=device)
    cand_val = torch.empty(batch, cfg.cap, dtype=torch.float32, device=device)
    cand_idx = torch.empty(batch, cfg.cap, dtype=torch.int32, device=device)
    cand_cnt = torch.empty(batch, dtype=torch.int32, device=device)
    token_ids = torch.empty(batch, dtype=torch.int64, device=device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=device)
    top_ids = torch.empty(batch, n_top, dtype=torch.int64, device=device)
    top_lp = torch.empty(batch, n_top, dtype=torch.float32, device=device)
    tau = torch.empty(batch, dtype=torch.float32, device=device)
    if batch == 0:
        return _result(token_ids, logprobs, top_ids, top_lp, num_logprobs), tau

    common = (logits, logits.stride(0), fparams, iparams, seen, counts, num_words, bias, mask, submax)
    flags = dict(HAS_PEN=has_pen, HAS_BIAS=has_bias, HAS_MASK=has_mask, BLOCK=cfg.block, SUB=cfg.sub,
                 NUM_BINS=NUM_BINS, num_warps=cfg.num_warps, enable_fp_fusion=False)
    grid = (batch,)
    _stats_kernel[grid](*common, stats_f, stats_i, vocab, cfg.num_sub, N_TOP=n_top, **flags)
    _compact_kernel[grid](*common, stats_i, cand_val, cand_idx, cand_cnt, vocab, cfg.num_sub, CAP=cfg.cap, **flags)
    _finalize_kernel[grid](
        *common, stats_f, stats_i, cand_val, cand_idx, cand_cnt, token_ids, logprobs, top_ids, top_lp, tau,
        vocab, cfg.num_sub, CAP=cfg.cap, N_TOP=n_top, WANT_LP=num_logprobs is not None, **flags)
    return _result(token_ids, logprobs, top_ids, top_lp, num_logprobs), tau


def _result(token_ids, logprobs, top_ids, top_lp, num_logprobs) -> SampleResult:
    if num_logprobs is None:
        return SampleResult(token_ids, None, None, None)
    if num_logprobs == 0:
        return SampleResult(token_ids, logprobs, None, None)
    return SampleResult(token_ids, logprobs, top_ids, top_lp)


# ----------------------------------------------------------------------------- noise check


@triton.jit
def _philox_bits_kernel(seed_ptr, position_ptr, token_ptr, out_ptr, n, BLOCK: tl.constexpr, CONTIGUOUS: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    seed = tl.load(seed_ptr)
    position = tl.load(position_ptr)
    if CONTIGUOUS:
        bits = _noise_bits_block(seed, position, tl.program_id(0) * BLOCK, BLOCK)
    else:
        bits = _noise_bits(seed, position, tl.load(token_ptr + offs, mask=live, other=0))
    tl.store(out_ptr + offs, bits.to(tl.int64) & 0xFFFFFFFF, mask=live)


def philox_bits(seed: int, position: int, tokens: Tensor | int, *, contiguous: bool = False) -> Tensor:
    """The kernel's random bits for one (seed, position): of ``tokens`` (int32), or of
    tokens 0..n-1 through the block path when ``contiguous`` (then ``tokens`` is n)."""
    n = tokens if contiguous else tokens.numel()
    device = "cpu" if contiguous else tokens.device
    token_arg = torch.zeros(1, dtype=torch.int32, device=device) if contiguous else tokens.int().contiguous()
    seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
    pos_t = torch.tensor([position], dtype=torch.int64, device=device)
    out = torch.empty(n, dtype=torch.int64, device=device)
    block = 256
    _philox_bits_kernel[(triton.cdiv(n, block),)](seed_t, pos_t, token_arg, out, n, BLOCK=block, CONTIGUOUS=contiguous)
    return out
