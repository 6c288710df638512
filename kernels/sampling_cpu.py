"""The sampler on the CPU: ``sampling_ref``'s maths with its random draw in ``cpu_sampling.c``.

The torch reference spends most of a sampled row's time drawing: Philox in int64 tensor ops
over the whole vocabulary, then a float64 Gumbel transform of every token. The native draw
computes the same Philox integers as ``sampling_ref.row_random_bits`` and the same float64
scores, token by token in cache-sized chunks, so it draws the reference's tokens (up to libm's
last-bit differences in log/log1p, which could decide a token only on a float64 tie).
Everything else, including the module's API, is the reference's. ``available()``: whether the C
source built.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import native, sampling_ref
from .sampling_ref import PenaltyState, SampleResult, SamplingTensors  # noqa: F401  (the sampler's API)


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_sampling")
    if not isinstance(lib, str):
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        lib.draw_tokens.restype = None
        lib.draw_tokens.argtypes = [ptr] * 5 + [i32, i32, ptr, i32]
    return lib


def available() -> bool:
    return not isinstance(_library(), str)


def draw_tokens(z: torch.Tensor, tau: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """Step 5 of ``sampling_ref.sample``: each sampled row's Gumbel-max draw over its kept tokens
    (``z >= tau``, finite), each greedy row's argmax (its ``z`` is its penalized logits)."""
    if z.device.type != "cpu" or z.dtype != torch.float32:
        return sampling_ref.draw_tokens(z, tau, params)
    z, tau = z.contiguous(), tau.float().contiguous()
    seed, position = params.seed.long().contiguous(), params.position.long().contiguous()
    sampled = (params.temperature > 0).to(torch.uint8)
    out = torch.empty(z.shape[0], dtype=torch.int64)
    _library().draw_tokens(z.data_ptr(), tau.data_ptr(), seed.data_ptr(), position.data_ptr(), sampled.data_ptr(),
                           z.shape[0], z.shape[1], out.data_ptr(), torch.get_num_threads())
    return out


def sample(logits, params, penalties=None, num_logprobs=None, *, validate: bool = True) -> SampleResult:
    """``sampling_ref.sample`` (same contract, same tokens) with the native draw."""
    return sampling_ref.sample(logits, params, penalties, num_logprobs, validate=validate, draw=draw_tokens)
