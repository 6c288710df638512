"""Linear layers over a few rows on the CPU: ``cpu_linear.c``, built on first use by ``native.py``.

``F.linear`` (the reference) for 2-D float32 or bfloat16 CPU inputs of at most ``row_limit(dtype)``
rows (decode steps of a few sequences), where a step streams every weight once and oneDNN's
packed GEMM reaches about 17 GB/s of this machine's 29. ``usable(x, weight)`` says whether it
takes these tensors; callers use oneDNN otherwise.

Where this kernel wins (SmolLM2's decoder weights, 30 layers, streamed from memory, 2 threads;
oneDNN's time over ours): float32 1.25x at one row, 1.4x at two, even at three, 0.9x at four;
bfloat16 1.7x at one to three rows, 1.2x at four, even at six and eight. Float32 has no
dot-product instruction to lean on, so it turns compute-bound sooner.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import native

DTYPES = native.DTYPES


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_linear")
    if not isinstance(lib, str):
        lib.small_linear.restype = None
        lib.small_linear.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5
    return lib


@functools.cache
def max_rows() -> int:
    lib = _library()
    return 0 if isinstance(lib, str) else lib.small_linear_max_rows()


ROWS_FASTER = {torch.float32: 2, torch.bfloat16: 4}  # the most rows where the kernel beats oneDNN (above)


def row_limit(dtype: torch.dtype) -> int:
    """The most rows ``usable`` takes in ``dtype`` (0: none, or the kernel did not build)."""
    return min(max_rows(), ROWS_FASTER.get(dtype, 0))


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dim() == 2 and 0 < x.shape[0] <= row_limit(x.dtype) and weight.dtype == x.dtype
            and x.device.type == "cpu" and x.is_contiguous() and weight.is_contiguous()
            and weight.shape[1] == x.shape[1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``usable`` inputs."""
    y = x.new_empty(x.shape[0], weight.shape[0])
    bias = None if bias is None else bias.to(x.dtype).contiguous()  # held: the kernel reads it through a pointer
    _library().small_linear(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), x.shape[0], weight.shape[0],
                            x.shape[1], DTYPES[x.dtype], torch.get_num_threads())
    return y
