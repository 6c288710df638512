"""Attention backends over the paged KV cache, and the per-step metadata they read.

A backend stores the step's new K/V into the cache, then attends: ``decode`` when
every sequence in the step has exactly one query token, ``prefill`` (variable-length,
causal over the paged context) otherwise. Backends:

- ``torch``: the reference in ``kernels/attention_ref.py``; runs everywhere.
- ``cpu``: ``kernels/cpu_attention.c``, native code compiled on first use, reading K/V in place,
  with the decoder's elementwise chains in ``kernels/cpu_fused.c``; CPU only; float32 and bfloat16
  (other dtypes take the references).
- ``triton``: ``kernels/attention.py``; CUDA, or CPU under ``TRITON_INTERPRET=1``.
- ``flash_attn``: flash-attn's paged kernels, when importable on CUDA.

Selection: ``EngineConfig.attention_backend`` or the ``BARE_ENGINE_ATTENTION_BACKEND``
environment variable ("auto" picks flash_attn, then triton on CUDA; cpu on the CPU when a C
compiler could build it, else torch).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from bare_engine.errors import ConfigError
from bare_engine.kernels import fused_ref

logger = logging.getLogger(__name__)

BACKEND_ENV = "BARE_ENGINE_ATTENTION_BACKEND"
BACKENDS = ("auto", "torch", "cpu", "triton", "flash_attn")


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot of each new token (-1: padding)
    block_tables: torch.Tensor  # [batch, max_blocks] int32
    context_lens: torch.Tensor  # [batch] int32: tokens in context after this step
    cu_seqlens_q: torch.Tensor  # [batch + 1] int32: query token offsets
    max_query_len: int
    max_context_len: int

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend:
    """Also carries the decoder's elementwise ops (``ops``: ``kernels/fused_ref.py``'s functions), so one
    choice of backend picks the native CPU kernels for both."""

    name = "base"
    ops = fused_ref

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        self.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode:
            return self.decode(q, k_cache, v_cache, meta, scale)
        return self.prefill(q, k_cache, v_cache, meta, scale)


class TorchBackend(AttentionBackend):
    name = "torch"

    def __init__(self) -> None:
        from bare_engine.kernels import attention_ref

        self.ref = attention_ref

    def store_kv(self, k, v, k_cache, v_cache, slot_mapping):
        self.ref.store_kv_ref(k, v, k_cache, v_cache, slot_mapping)

    def prefill(self, q, k_cache, v_cache, meta, scale):
        return self._plan(meta, q, k_cache).attend(q, k_cache, v_cache, scale)

    def decode(self, q, k_cache, v_cache, meta, scale):
        return self._plan(meta, q, k_cache).attend(q, k_cache, v_cache, scale)

    def _plan(self, meta, q, k_cache):
        """The step's attention plan, built by the first layer and reused by the others."""
        plan = getattr(meta, "torch_plan", None)
        if plan is None:
            plan = self.ref.AttentionPlan.build(meta.block_tables, meta.cu_seqlens_q, meta.context_lens,
                                                k_cache.shape[1], k_cache.shape[2], q.shape[1] // k_cache.shape[2])
            meta.torch_plan = plan
        return plan


class CpuBackend(TorchBackend):
    """Native K/V stores and attention over the paged cache, and native elementwise ops (``kernels/cpu_fused.c``)."""

    name = "cpu"

    def __init__(self) -> None:
        super().__init__()
        from bare_engine.kernels import cpu_attention, cpu_fused

        self.kernel = cpu_attention
        if cpu_fused.available():
            self.ops = cpu_fused
        else:
            logger.info("native CPU layer ops unavailable; using torch's")

    def store_kv(self, k, v, k_cache, v_cache, slot_mapping):
        self.kernel.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def prefill(self, q, k_cache, v_cache, meta, scale):
        if not self.kernel.supports(q, k_cache):  # float16, or heads past the kernel's limits
            return super().prefill(q, k_cache, v_cache, meta, scale)
        return self.kernel.paged_attention(q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q,
                                           meta.context_lens, scale)

    decode = prefill


class TritonBackend(AttentionBackend):
    name = "triton"

    def __init__(self) -> None:
        from bare_engine.kernels import attention

        self.kernels = attention

    def store_kv(self, k, v, k_cache, v_cache, slot_mapping):
        self.kernels.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def prefill(self, q, k_cache, v_cache, meta, scale):
        return self.kernels.prefill_attention(
            q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, meta.context_lens, scale
        )

    def decode(self, q, k_cache, v_cache, meta, scale):
        return self.kernels.decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale)


class FlashAttnBackend(TritonBackend):
    """flash-attn's varlen/kv-cache kernels read the same paged layout; K/V stores use Triton."""

    name = "flash_attn"

    def __init__(self) -> None:
        super().__init__()
        import flash_attn

        self.fa = flash_attn

    def prefill(self, q, k_cache, v_cache, meta, scale):
        return self.fa.flash_attn_varlen_func(
            q, k_cache, v_cache,
            cu_seqlens_q=meta.cu_seqlens_q,
            max_seqlen_q=meta.max_query_len,
            seqused_k=meta.context_lens,
            max_seqlen_k=meta.max_context_len,
            softmax_scale=scale,
            causal=True,
            block_table=meta.block_tables,
        )

    def decode(self, q, k_cache, v_cache, meta, scale):
        out = self.fa.flash_attn_with_kvcache(
            q.unsqueeze(1), k_cache, v_cache,
            cache_seqlens=meta.context_lens,
            block_table=meta.block_tables,
            softmax_scale=scale,
            causal=True,
        )
        return out.squeeze(1)


def triton_usable(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def cpu_kernel_usable() -> bool:
    from bare_engine.kernels import cpu_attention

    if not cpu_attention.available():
        logger.info("native CPU attention unavailable (%s); using the torch backend", cpu_attention.build_error())
        return False
    return True


def select_backend(requested: str, device: torch.device) -> AttentionBackend:
    name = os.environ.get(BACKEND_ENV) or requested
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            name = "flash_attn"
        elif device.type == "cuda" and triton_usable(device):
            name = "triton"
        elif device.type == "cpu" and cpu_kernel_usable():
            name = "cpu"
        else:
            name = "torch"
    if name in ("triton", "flash_attn") and not triton_usable(device):
        raise ConfigError(
            f"attention backend {name!r} needs Triton on CUDA (or TRITON_INTERPRET=1 on CPU); device is {device}"
        )
    if name == "cpu":
        from bare_engine.kernels import cpu_attention

        why = f"device is {device}" if device.type != "cpu" else cpu_attention.build_error()
        if why:
            raise ConfigError(f"attention backend 'cpu' needs the CPU and a C compiler to build it: {why}")
    if name == "flash_attn" and (device.type != "cuda" or importlib.util.find_spec("flash_attn") is None):
        raise ConfigError("attention backend 'flash_attn' needs the flash-attn package and a CUDA device")
    backend = {"torch": TorchBackend, "cpu": CpuBackend, "triton": TritonBackend, "flash_attn": FlashAttnBackend}[name]()
    logger.info("attention backend: %s", backend.name)
    return backend
