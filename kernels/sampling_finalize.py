"""Pass 4 (``_finalize_kernel``, one program per row): exact threshold, draw, logprob, top-n."""

from __future__ import annotations

import triton
import triton.language as tl

from .sampling_draw import _sample_candidates, _sample_full_row
from .sampling_keys import NEG_INF_KEY, _key_to_float, _order_key
from .sampling_logits import _load_row_params
from .sampling_logprobs import _top_candidates, _top_full_row
from .sampling_threshold import _candidates_above, _candidates_low_mass, _narrow, _pivots, _row_above


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
