"""The decoder-only transformer shared by Llama, Mistral, Qwen2 and Qwen3.

Works on a flat batch of tokens (no padding): ``input_ids`` and ``positions`` are
``[num_tokens]`` and attention reads/writes the paged KV cache through the
attention backend and the step's ``AttentionMetadata``.
"""

from __future__ import annotations

import torch
from torch import nn

from bare_engine.kernels import fused_ref
from bare_engine.model.layers.attention import AttentionBackend, AttentionMetadata
from bare_engine.model.config import ModelConfig
from bare_engine.model.layers.linear import (
    SINGLE_RANK,
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    empty_parameter,
    even_piece,
    head_piece,
    linear,
    PackedWeight,
    pack_weight,
    padded_piece,
)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = empty_parameter(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, ops=fused_ref):
        """``x`` normalised; with ``residual``, ``(normalised x + residual, x + residual)`` (see ``fused_ref``)."""
        return ops.rms_norm(x, self.weight, self.eps, residual)


class RotaryEmbedding(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        inv_freq = config.inv_freq()
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def angles(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[N, 1, head_dim / 2]`` of the step's positions: looked up once, used by every layer."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


class Attention(nn.Module):
    """This rank's query heads and KV heads (KV heads replicated when there are fewer than ranks)."""

    def __init__(self, config: ModelConfig, group):
        super().__init__()
        self.head_dim = config.head_dim
        q = even_piece(config.num_heads * self.head_dim, group)
        kv = head_piece(config.num_kv_heads, self.head_dim, group)
        self.q_size, self.kv_size = q.rows, kv.rows
        self.num_heads = self.q_size // self.head_dim
        self.num_kv_heads = self.kv_size // self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = ColumnParallelLinear(config.hidden_size, [q, kv, kv], bias=config.qkv_bias)
        self.o_proj = RowParallelLinear(q, config.hidden_size, group, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm

    def forward(
        self,
        x: torch.Tensor,
        angles: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim))
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim))
            q, k = backend.ops.rotate(q, *angles), backend.ops.rotate(k, *angles)
        else:  # q and k heads are adjacent in each row: one rotation for both
            qk = backend.ops.rotate(qk.reshape(-1, self.num_heads + self.num_kv_heads, self.head_dim), *angles)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        out = backend.forward(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, group):
        super().__init__()
        inner = even_piece(config.intermediate_size, group)
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, [inner, inner], bias=config.mlp_bias)
        self.down_proj = RowParallelLinear(inner, config.hidden_size, group, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor, ops=fused_ref) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, group):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, group)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, group)

    def forward(self, x, residual, angles, kv_cache, backend, meta):
        """``(x, residual)`` in and out, vLLM's form: the residual add is fused into the next norm.
        The first layer gets ``residual=None`` (x is the embedding)."""
        if residual is None:
            residual, x = x, self.input_layernorm(x, ops=backend.ops)
        else:
            x, residual = self.input_layernorm(x, residual, backend.ops)
        x = self.self_attn(x, angles, kv_cache, backend, meta)
        x, residual = self.post_attention_layernorm(x, residual, backend.ops)
        return self.mlp(x, backend.ops), residual


class CausalLM(nn.Module):
    """Checkpoint names map onto these modules one to one, except q/k/v -> qkv_proj and gate/up -> gate_up_proj.

    ``group`` is the tensor-parallel rank this copy is (``SINGLE_RANK``: the whole model); see
    ``bare_engine/model/layers/linear.py`` for the layout.
    """

    # HF sub-module name -> (fused module name, shard index)
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, max_positions: int, group=SINGLE_RANK):
        super().__init__()
        self.config = config
        self.group = group
        self.rotary = RotaryEmbedding(config, max_positions)
        self.model = nn.Module()
        self.model.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, group)
        self.model.layers = nn.ModuleList(DecoderLayer(config, group) for _ in range(config.num_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = ColumnParallelLinear(config.hidden_size, [padded_piece(config.vocab_size, group)])
        self.lm_head_packed: PackedWeight | None = None

    def pack_weights(self) -> None:
        """Prepack every linear's loaded weight (and the LM head's) for the CPU; see ``layers.linear.pack_weight``."""
        for module in self.modules():
            if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
                module.pack()
        self.lm_head_packed = pack_weight(self._lm_head_weight())

    def _lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    @property
    def num_kv_heads(self) -> int:
        """KV heads this rank caches."""
        return self.model.layers[0].self_attn.num_kv_heads

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        angles = self.rotary.angles(positions, x.dtype)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(x, residual, angles, kv_cache, backend, meta)
        if residual is None:  # no layers
            return self.model.norm(x, ops=backend.ops)
        return self.model.norm(x, residual, backend.ops)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Float32 logits over the whole vocabulary on rank 0 (gathered from the ranks' shares); None elsewhere."""
        logits = self.group.gather(linear(hidden, self._lm_head_weight(), packed=self.lm_head_packed))
        if logits is None:
            return None
        return logits[:, : self.config.vocab_size].float()

