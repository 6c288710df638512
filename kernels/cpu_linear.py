"""Linear layers over the rows of a decode step on the CPU: ``cpu_linear.c``, built on first use by ``native.py``.

``F.linear`` (the reference) for 2-D float32 or bfloat16 CPU inputs of at most ``ROW_LIMIT`` rows,
from a weight packed once by ``pack`` into panels of 16 outputs (see ``cpu_linear.c``). Callers
use oneDNN's packed GEMM past the limit, or where ``pack`` returns None (no AVX-512, no
AVX512-BF16 for bfloat16, an odd bfloat16 row length, no C compiler).

Against oneDNN's prepacked GEMM (``benchmarks/cpu_linear.py``: SmolLM2's decoder weights, 30
layers, streamed from memory, 2 threads; oneDNN's time over ours): bfloat16 1.5-1.6x at 1-2 rows,
1.3x at 4-12, 1.2x at 16-32, 1.05-1.1x at 64-128; float32 1.6-1.7x at 1-2 rows, 1.35-1.45x at
4-12, 1.25x at 16-32, 1.1x at 64-128. Past 128 rows (prefill) the two are within a few percent,
and oneDNN's layout takes them.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from . import native

DTYPES = native.DTYPES
ROW_LIMIT = 128  # the most rows where the kernel clearly beats oneDNN (above)


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_linear")
    if not isinstance(lib, str):
        lib.packed_weight_numel.restype = ctypes.c_int64
        lib.packed_weight_numel.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pack_weight.restype = None
        lib.pack_weight.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3
        lib.packed_linear.restype = None
        lib.packed_linear.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5
    return lib


def supported(dtype: torch.dtype) -> bool:
    """Whether this machine's build of the kernel takes ``dtype``."""
    lib = _library()
    return dtype in DTYPES and not isinstance(lib, str) and bool(lib.panel_linear_supported(DTYPES[dtype]))


@dataclass(frozen=True)
class PanelWeight:
    """A ``[out_features, in_features]`` weight in the kernel's panels (outputs padded to whole tiles)."""

    data: torch.Tensor
    out_features: int
    in_features: int


def pack(weight: torch.Tensor) -> PanelWeight | None:
    """``weight`` packed for ``linear``; None where the kernel does not take it."""
    if weight.dim() != 2 or weight.device.type != "cpu" or not supported(weight.dtype):
        return None
    n, k = weight.shape
    if weight.dtype == torch.bfloat16 and k % 2:  # bfloat16 panels hold pairs of inputs
        return None
    lib, weight = _library(), weight.detach().contiguous()
    data = torch.empty(lib.packed_weight_numel(n, k), dtype=weight.dtype)
    lib.pack_weight(weight.data_ptr(), data.data_ptr(), n, k, DTYPES[weight.dtype])
    return PanelWeight(data, n, k)


def usable(x: torch.Tensor, weight: PanelWeight) -> bool:
    return (x.dim() == 2 and 0 < x.shape[0] <= ROW_LIMIT and x.shape[1] == weight.in_features
            and x.dtype == weight.data.dtype and x.device.type == "cpu" and x.is_contiguous())


def linear(x: torch.Tensor, weight: PanelWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, bias)`` for ``usable`` inputs, ``weight = pack(w)``."""
    y = x.new_empty(x.shape[0], weight.out_features)
    bias = None if bias is None else bias.to(x.dtype).contiguous()  # held: the kernel reads it through a pointer
    _library().packed_linear(x.data_ptr(), weight.data.data_ptr(), None if bias is None else bias.data_ptr(),
                             y.data_ptr(), x.shape[0], weight.out_features, weight.in_features, DTYPES[x.dtype],
                             torch.get_num_threads())
    return y
