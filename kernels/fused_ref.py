"""The decoder's elementwise chains in torch: the reference of ``cpu_fused.c`` and the path off the CPU.

- ``rms_norm``: ``weight * rms_norm(x)``, normalised in float32 and cast back before the weight, as
  transformers does; with ``residual``, ``x + residual`` is normalised and also written back to
  ``residual`` (vLLM's fused add-norm), so a layer keeps one running residual buffer.
- ``silu_and_mul``: ``silu(gate) * up`` of the fused gate/up projection ``[N, 2 * inner]``.
- ``rotate``: rotate-half rotary embedding of ``[N, heads, head_dim]`` by the step's cos/sin
  ``[N, 1, head_dim / 2]`` (in x's dtype). The native kernel rotates in place; use the result.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """The normalised rows; with ``residual``, ``(normalised, residual)`` where ``residual += x`` first."""
    if residual is not None:
        x = residual.add_(x)
    out = weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)
    return out if residual is None else (out, residual)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
