"""Ordering helpers shared by the passes: float32 order keys and the 1/4-nat histogram grid."""

from __future__ import annotations

import triton
import triton.language as tl

NUM_BINS = 64  # histogram bins: 0..61 below the max bin, 62 = everything lower, 63 = -inf / padding
NEG_INF_KEY = tl.constexpr(-2139095041)  # order key of -inf
NO_ANCHOR = tl.constexpr(-(2**30))  # anchor bin of a block with no finite logit


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
