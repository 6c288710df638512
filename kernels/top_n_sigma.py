"""Triton top-nσ filter: one program per row, two passes over it. Semantics: ``top_n_sigma_ref.py``.

Pass 1 reads the row once and merges per-block count, mean and sum of squared
deviations (Chan et al.'s pairwise update, float64) with the row max; pass 2 writes
``z`` where ``z >= max - n * sigma`` and -inf elsewhere. The block size is fixed, so a
row's result does not depend on the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024


@triton.jit
def _top_n_sigma_kernel(z_ptr, n_ptr, out_ptr, vocab, z_stride, out_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * z_stride
    out_row = out_ptr + row.to(tl.int64) * out_stride
    lanes = tl.arange(0, BLOCK)
    count = tl.full([], 0.0, tl.float64)
    mean = tl.full([], 0.0, tl.float64)
    m2 = tl.full([], 0.0, tl.float64)
    z_max = tl.full([], float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        z = tl.load(z_row + offs, mask=offs < vocab, other=float("-inf"))
        finite = z > float("-inf")
        z_max = tl.maximum(z_max, tl.max(tl.where(finite, z, float("-inf")), axis=0))
        z64 = z.to(tl.float64)
        n_blk = tl.sum(finite.to(tl.float64), axis=0)
        mean_blk = tl.sum(tl.where(finite, z64, 0.0), axis=0) / tl.maximum(n_blk, 1.0)
        dev = tl.where(finite, z64 - mean_blk, 0.0)
        total = count + n_blk
        delta = mean_blk - mean
        share = n_blk / tl.maximum(total, 1.0)
        mean = mean + delta * share
        m2 = m2 + tl.sum(dev * dev, axis=0) + delta * delta * count * share
        count = total
    sigma = tl.sqrt(m2 / tl.maximum(count, 1.0))
    threshold = z_max.to(tl.float64) - tl.load(n_ptr + row).to(tl.float64) * sigma
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        live = offs < vocab
        z = tl.load(z_row + offs, mask=live, other=float("-inf"))
        keep = (z > float("-inf")) & (z.to(tl.float64) >= threshold)
        tl.store(out_row + offs, tl.where(keep, z, float("-inf")), mask=live)


def top_n_sigma(z: Tensor, n: Tensor) -> Tensor:
    """``z`` float32 [R, V], ``n`` float32 [R] (>= 0) -> filtered float32 [R, V]."""
    rows, vocab = z.shape
    if z.stride(1) != 1:
        z = z.contiguous()
    out = torch.empty_like(z)
    if rows > 0 and vocab > 0:
        _top_n_sigma_kernel[(rows,)](z, n.float().contiguous(), out, vocab, z.stride(0), out.stride(0), BLOCK=BLOCK)
    return out
