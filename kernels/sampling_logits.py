"""Per-row parameters and the processed logits of every pass (reference steps 1-3).

``_row_params`` packs a row's parameters on the host, ``_load_row_params`` reads them
in a program; ``_processed_logits`` applies penalties, bias, the allowed mask and the
temperature to a block of tokens, bit-identical to ``sampling_ref``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .sampling_ref import PenaltyState, SamplingTensors


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


@triton.jit
def _load_row_params(fparams_ptr, iparams_ptr, row):
    f = fparams_ptr + row * 8
    i = iparams_ptr + row * 8
    return (
        tl.load(f + 0), tl.load(f + 1), tl.load(f + 2), tl.load(f + 3), tl.load(f + 4), tl.load(f + 5),
        tl.load(i + 0).to(tl.int32), tl.load(i + 1).to(tl.int32), tl.load(i + 2).to(tl.int32),
        tl.load(i + 3), tl.load(i + 4),
    )


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
