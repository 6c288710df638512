"""Threshold search: multi-pivot bisection on the float bit pattern of ``z``.

Over the candidate buffer (``_candidates_*``) or, when the candidates cannot bracket
the threshold, by passes over the whole row (``_row_above``). The bracket [lo, hi)
keeps lo satisfying top-k or top-p and hi satisfying neither.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_keys import _order_key
from .sampling_logits import _processed_logits


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
