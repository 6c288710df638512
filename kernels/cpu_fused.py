"""The decoder's elementwise chains in native code: ``cpu_fused.c``, built on first use by ``native.py``.

Same functions and semantics as ``fused_ref`` (the reference), one pass over memory and one call
each instead of 4-10 torch ops. float32 and bfloat16 CPU tensors take the kernel; anything else
(float16, CUDA, rows that are not packed) takes the reference, so callers never check.
``available()`` says whether it could be built.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import fused_ref, native

DTYPES = native.DTYPES


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_fused")
    if not isinstance(lib, str):
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        signatures = {
            "rms_norm": [ptr, ptr, ptr, ptr, i32, i32, ctypes.c_float, i32, i32],
            "silu_and_mul": [ptr, ptr, i32, i32, i32, i32],
            "rotary": [ptr, ctypes.c_int64, i32, i32, i32, ptr, ptr, i32, i32],
        }
        for name, argtypes in signatures.items():
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = argtypes
    return lib


def available() -> bool:
    return not isinstance(_library(), str)


def _native(x: torch.Tensor, *others: torch.Tensor) -> ctypes.CDLL | None:
    """The library when ``x`` and ``others`` are contiguous CPU tensors of one supported dtype, else None."""
    if x.device.type != "cpu" or x.dtype not in DTYPES or not x.is_contiguous():
        return None
    for t in others:
        if t.dtype != x.dtype or t.device.type != "cpu" or not t.is_contiguous():
            return None
    lib = _library()
    return None if isinstance(lib, str) else lib


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """``fused_ref.rms_norm``."""
    lib = _native(x, weight) if residual is None else _native(x, weight, residual)
    if lib is None or x.dim() != 2 or weight.shape != x.shape[-1:] or (residual is not None and residual.shape != x.shape):
        return fused_ref.rms_norm(x, weight, eps, residual)
    out = torch.empty_like(x)
    lib.rms_norm(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(), out.data_ptr(),
                 x.shape[0], x.shape[1], eps, DTYPES[x.dtype], torch.get_num_threads())
    return out if residual is None else (out, residual)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``fused_ref.silu_and_mul``."""
    lib = _native(gate_up)
    if lib is None or gate_up.dim() != 2 or gate_up.shape[1] % 2:
        return fused_ref.silu_and_mul(gate_up)
    out = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
    lib.silu_and_mul(gate_up.data_ptr(), out.data_ptr(), out.shape[0], out.shape[1], DTYPES[out.dtype],
                     torch.get_num_threads())
    return out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``fused_ref.rotate``, in place: ``x`` may be a view into a wider row (a head slice of the fused qkv)."""
    lib = _native(cos, sin)
    if (lib is None or not native.heads_packed(x) or x.shape[2] % 2 or x.dtype != cos.dtype
            or x.device.type != "cpu" or cos.shape != (x.shape[0], 1, x.shape[2] // 2) or sin.shape != cos.shape):
        return fused_ref.rotate(x, cos, sin)
    rows, heads, head_dim = x.shape
    lib.rotary(x.data_ptr(), x.stride(0), rows, heads, head_dim, cos.data_ptr(), sin.data_ptr(), DTYPES[x.dtype],
               torch.get_num_threads())
    return x
