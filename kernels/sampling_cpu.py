"""The sampler on the CPU: ``sampling_ref``'s maths with its Philox bits from ``cpu_philox.c``.

The torch reference spends most of a sampled row's time on Philox in int64 tensor ops over
the whole vocabulary; the native bits are the same integers (``row_random_bits`` here equals
``sampling_ref.row_random_bits``), so the tokens drawn are the reference's. Everything else,
including the module's API, is the reference's. ``available()``: whether the C source built.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import native, sampling_ref
from .sampling_ref import PenaltyState, SampleResult, SamplingTensors  # noqa: F401  (the sampler's API)


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_philox")
    if not isinstance(lib, str):
        lib.row_random_bits.restype = None
        lib.row_random_bits.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                        ctypes.c_void_p, ctypes.c_int]
    return lib


def available() -> bool:
    return not isinstance(_library(), str)


def row_random_bits(seed: torch.Tensor, position: torch.Tensor, vocab: int) -> torch.Tensor:
    """``sampling_ref.row_random_bits`` in native code: [R, vocab] int64 in [0, 2**32)."""
    if seed.device.type != "cpu":
        return sampling_ref.row_random_bits(seed, position, vocab)
    seed, position = seed.long().contiguous(), position.long().contiguous()
    out = torch.empty(seed.shape[0], vocab, dtype=torch.int64)
    _library().row_random_bits(seed.data_ptr(), position.data_ptr(), seed.shape[0], vocab, out.data_ptr(),
                               torch.get_num_threads())
    return out


def sample(logits, params, penalties=None, num_logprobs=None, *, validate: bool = True) -> SampleResult:
    """``sampling_ref.sample`` (same contract, same tokens) with native Philox bits."""
    return sampling_ref.sample(logits, params, penalties, num_logprobs, validate=validate,
                               row_random_bits=row_random_bits)
