"""Triton sampler: penalties, temperature, top-k / top-p / min-p and seeded Gumbel-max
sampling for a mixed batch, without sorting the vocabulary.

Semantics (order of operations, tie rules, logprobs, noise) are those of
``kernels/sampling_ref.py``; this module only makes them fast. Four launches:

1. ``_block_stats_kernel``, one program per (row, 2048-token block), reads the
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

Logits processors and named sampling steps (top-nσ, ...) run outside these kernels, in
``bare_engine/logits_processors.py`` and ``bare_engine/sampling_steps.py``: a row with
steps arrives here as its filtered logits with neutral parameters.

One file per pass and per concern (this module launches them and holds the shapes):

=========================  ==================================================
``sampling_logits.py``     row parameters; penalties, bias, mask, temperature
``sampling_noise.py``      Philox bits keyed on (seed, position, token); Gumbel
``sampling_keys.py``       float order keys and the 1/4-nat histogram grid
``sampling_histogram.py``  passes 1 and 2: block statistics, row summary, cut bin
``sampling_compact.py``    pass 3: candidate compaction
``sampling_threshold.py``  the threshold search (multi-pivot bisection)
``sampling_draw.py``       the seeded Gumbel-max draw over the kept tokens
``sampling_logprobs.py``   the top-n logprobs
``sampling_finalize.py``   pass 4, which ties the last three together
=========================  ==================================================

Batch invariance: block sizes depend on the vocabulary only, every reduction of a
row happens in a fixed order inside its own programs, and the noise is a pure
function of (seed, position, token index). So a row's token does not depend on the
rest of the batch, its index, or CUDA-graph capture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from .sampling_compact import _compact_kernel
from .sampling_finalize import _finalize_kernel
from .sampling_histogram import _block_stats_kernel, _summary_kernel
from .sampling_keys import NUM_BINS
from .sampling_logits import _row_params
from .sampling_noise import philox_bits
from .sampling_ref import (
    PenaltyState,
    SampleResult,
    SamplingTensors,
    validate_sampling_tensors,
)

__all__ = ["PenaltyState", "SampleResult", "SamplingTensors", "philox_bits", "sample", "triton_available"]

BLOCK = 2048  # tokens per pass-1 / pass-2 program
SUB = 256  # tokens per sub-block whose max is kept for skipping
CAP = 8192  # most candidates a row can hand to the finalize kernel
CHUNK = 512  # candidates the finalize kernel handles at a time
NPIV = 8  # pivots per bisection step
LOOP_BLOCK = 1024  # tokens per iteration of the fallback's passes over a row
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device) -> bool:
    """Whether ``sample`` here can run on tensors on ``device``."""
    device = torch.device(device)
    return _INTERPRETED or (device.type == "cuda" and torch.cuda.is_available())


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
