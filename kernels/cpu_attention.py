"""Native CPU paged attention: ``cpu_attention.c``, built on first use by ``native.py``.

Same signature and semantics as ``attention_ref.paged_attention_ref`` (the cache layout is
described there), for float32 and bfloat16; ``store_kv`` is ``attention_ref.store_kv_ref``. It reads
K/V in place through the block table, so a step never gathers the cache into padded copies as the torch reference does.
``available()`` says whether it could be built; ``build_error()`` says why not.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import attention_ref, native
from .errors import KernelInputError

DTYPES = native.DTYPES


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_attention")
    if not isinstance(lib, str):
        lib.paged_attention.restype = ctypes.c_int
        lib.paged_attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] + [ctypes.c_void_p] * 2 + \
            [ctypes.c_int] * 5 + [ctypes.c_float] + [ctypes.c_int] * 4
        lib.paged_attention_shared_decodes.restype = ctypes.c_int
        lib.paged_attention_shared_decodes.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 2 + \
            [ctypes.c_int] * 5
        lib.store_kv.restype = ctypes.c_int
        lib.store_kv.argtypes = [ctypes.c_void_p, ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + \
            [ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    return lib


def available() -> bool:
    return not isinstance(_library(), str)


def build_error() -> str | None:
    lib = _library()
    return lib if isinstance(lib, str) else None


def _within_limits(lib: ctypes.CDLL, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    return (q.shape[-1] <= lib.paged_attention_max_head_dim()
            and q.shape[1] // k_cache.shape[2] <= lib.paged_attention_max_group())


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel takes these dtypes and head shapes (the caller falls back otherwise)."""
    lib = _library()
    return not isinstance(lib, str) and q.dtype in DTYPES and k_cache.dtype in DTYPES and _within_limits(lib, q, k_cache)


def _check(lib, q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens) -> None:
    if q.device.type != "cpu" or k_cache.device.type != "cpu":
        raise KernelInputError("the native CPU attention kernel takes CPU tensors")
    if q.dtype not in DTYPES or k_cache.dtype not in DTYPES or v_cache.dtype != k_cache.dtype:
        raise KernelInputError(f"dtypes q={q.dtype} cache={k_cache.dtype}/{v_cache.dtype}: float32 or bfloat16 only")
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise KernelInputError(f"shapes q={tuple(q.shape)} k={tuple(k_cache.shape)} v={tuple(v_cache.shape)}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or num_heads % num_kv_heads:
        raise KernelInputError(f"q heads {num_heads}x{head_dim} do not fit the cache's {num_kv_heads}x"
                               f"{k_cache.shape[3]}")
    if not _within_limits(lib, q, k_cache):
        raise KernelInputError(f"head_dim {head_dim} or GQA group {num_heads // num_kv_heads} above the kernel's "
                               "limits")
    for name, t in (("block_tables", block_tables), ("cu_seqlens_q", cu_seqlens_q), ("context_lens", context_lens)):
        if t.dtype != torch.int32:
            raise KernelInputError(f"{name} must be int32, got {t.dtype}")


def _built() -> ctypes.CDLL:
    """The kernel's library; KernelInputError when it could not be built."""
    lib = _library()
    if isinstance(lib, str):
        raise KernelInputError(f"the native CPU attention kernel is unavailable: {lib}")
    return lib


def paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale: float,
                    share_prefix: bool = True) -> torch.Tensor:
    """``attention_ref.paged_attention_ref`` in native code; returns ``[N, Hq, D]`` in q's dtype.

    ``share_prefix``: decodes whose block tables start with the same blocks (a shared prompt, from
    the prefix cache) read those blocks once for all of them. Each row's result is the same either way."""
    lib = _built()
    _check(lib, q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens)
    q = q.contiguous()
    tables, cu, ctx = block_tables.contiguous(), cu_seqlens_q.contiguous(), context_lens.contiguous()
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise KernelInputError("the KV cache must be contiguous")
    out = torch.empty_like(q)
    status = lib.paged_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
                                 tables.data_ptr(), tables.stride(0), cu.data_ptr(), ctx.data_ptr(), cu.numel() - 1,
                                 q.shape[1], k_cache.shape[2], q.shape[2], k_cache.shape[1], float(scale),
                                 DTYPES[q.dtype], DTYPES[k_cache.dtype], torch.get_num_threads(), int(share_prefix))
    if status != 0:
        raise MemoryError("the native CPU attention kernel could not allocate its work list")
    return out


def shared_decodes(q, k_cache, block_tables, cu_seqlens_q, context_lens) -> int:
    """How many decodes ``paged_attention`` (with ``share_prefix``) puts in work items shared with
    sequences that read the same leading blocks, at the current thread count."""
    lib = _built()
    tables, cu, ctx = block_tables.contiguous(), cu_seqlens_q.contiguous(), context_lens.contiguous()
    return lib.paged_attention_shared_decodes(tables.data_ptr(), tables.stride(0), cu.data_ptr(), ctx.data_ptr(),
                                              cu.numel() - 1, q.shape[1], k_cache.shape[2], k_cache.shape[1],
                                              torch.get_num_threads())


def store_kv(key, value, k_cache, v_cache, slot_mapping) -> None:
    """``attention_ref.store_kv_ref`` in native code: one copy per row, no mask or index tensors."""
    lib = _library()
    if (isinstance(lib, str) or key.dtype != k_cache.dtype or value.dtype != v_cache.dtype or key.device.type != "cpu"
            or not (native.heads_packed(key) and native.heads_packed(value) and k_cache.is_contiguous() and v_cache.is_contiguous())
            or key.shape[1:] != k_cache.shape[2:] or value.shape != key.shape or k_cache.shape != v_cache.shape):
        return attention_ref.store_kv_ref(key, value, k_cache, v_cache, slot_mapping)
    slots = slot_mapping.to(torch.int64).contiguous()
    status = lib.store_kv(key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0), k_cache.data_ptr(),
                          v_cache.data_ptr(), slots.data_ptr(), slots.numel(), k_cache.shape[0] * k_cache.shape[1],
                          key.shape[1] * key.shape[2], key.element_size())
    if status != 0:
        raise KernelInputError(f"a slot in slot_mapping is past the cache's {k_cache.shape[0] * k_cache.shape[1]} slots")
