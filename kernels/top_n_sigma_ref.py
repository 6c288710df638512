"""Torch reference of the top-nσ filter (Tang et al., 2024): the specification of ``top_n_sigma.py``.

Per row of ``z`` (logits after penalties and temperature), over its finite tokens:
``mu`` and ``sigma`` are the mean and the population standard deviation, in float64;
the row keeps the tokens with ``z >= max(z) - n * sigma`` and sets the others to -inf.
Kept values are unchanged. ``n = 0`` keeps the maximum and its ties; a row with one
finite token keeps it; a row with none stays all -inf. Since ``max(z)`` and ``sigma``
both scale with ``1 / temperature``, the kept set does not depend on the temperature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def top_n_sigma(z: Tensor, n: Tensor) -> Tensor:
    """``z`` float32 [R, V], ``n`` float32 [R] (>= 0) -> filtered float32 [R, V]."""
    finite = z > -math.inf  # also False for NaN
    count = finite.sum(dim=1).clamp(min=1).double()
    z64 = torch.where(finite, z.double(), 0.0)
    mean = z64.sum(dim=1) / count
    centered = torch.where(finite, z.double() - mean[:, None], 0.0)
    sigma = torch.sqrt((centered * centered).sum(dim=1) / count)
    z_max = torch.where(finite, z, -math.inf).max(dim=1).values.double()
    threshold = z_max - n.double() * sigma
    keep = finite & (z.double() >= threshold[:, None])
    return torch.where(keep, z, -math.inf)
