"""Noise: Philox random bits keyed on (seed, position, token) and the Gumbel transform.

The bits equal ``sampling_ref.random_bits`` exactly; ``philox_bits`` exposes them for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


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
