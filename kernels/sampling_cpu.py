"""The sampler on the CPU: ``sampling_ref``'s maths with its random draw in ``cpu_sampling.c`` and
top-k rows' thresholds from ``torch.topk``.

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
import math

import torch

from . import native, sampling_ref
from .sampling_ref import PenaltyState, SampleResult, SamplingTensors  # noqa: F401  (the sampler's API)


@functools.cache
def _library() -> ctypes.CDLL | str:
    lib = native.load("cpu_sampling")
    if not isinstance(lib, str):
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        lib.exp_mass.restype = None
        lib.exp_mass.argtypes = [ptr, ptr, i32, i32, ptr, i32]
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


def filter_threshold(z: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """Step 4 of ``sampling_ref.sample``. A row whose top_k bounds its kept set (0 < k < vocabulary,
    its k-th largest value finite) takes its thresholds from its top-k values (``torch.topk``) instead
    of a sort of the whole vocabulary: the top-k prefix of the sorted row and of its cumulative mass is
    all that can decide ``max(tau_k, tau_p, tau_min)`` there. Other filtered rows take the reference."""
    tau, rows = sampling_ref.unfiltered_threshold(z, params)
    if rows.numel() == 0:
        return tau
    every = rows.numel() == z.shape[0]  # the common case: no gather of the rows
    z_rows, k = (z if every else z[rows]), params.top_k.long()[rows]
    top_p, min_p = params.top_p[rows].float(), params.min_p[rows].float()
    has_k = (k > 0) & (k < z.shape[1])
    k_or_1 = torch.where(has_k, k, 1)
    values = torch.topk(z_rows, int(k_or_1.max()), dim=1, sorted=True).values
    tau_k = values.gather(1, (k_or_1 - 1)[:, None])[:, 0]
    bounded = has_k & (tau_k > -math.inf)  # k <= the row's finite tokens
    if bool(bounded.all()):
        tau[rows] = _top_k_thresholds(z_rows, values, tau_k, top_p, min_p)
        return tau
    b, o = bounded.nonzero()[:, 0], (~bounded).nonzero()[:, 0]
    tau[rows[b]] = _top_k_thresholds(z_rows[b], values[b], tau_k[b], top_p[b], min_p[b])
    tau[rows[o]] = sampling_ref._thresholds(z_rows[o], k[o], top_p[o], min_p[o])
    return tau


def _top_k_thresholds(z: torch.Tensor, values: torch.Tensor, tau_k: torch.Tensor, top_p: torch.Tensor,
                      min_p: torch.Tensor) -> torch.Tensor:
    """``sampling_ref._thresholds`` for rows with 0 < top_k <= their finite tokens, from their largest
    values (sorted, at least top_k of them) and tau_k. A top_p boundary past those values lies at or
    below tau_k, so it cannot raise tau. The total mass is summed unsorted: the same float64 value up
    to its last bits, which could flip only a top_p boundary tied to 1e-16."""
    neg_inf = torch.full_like(top_p, -math.inf)
    z_max = values[:, 0]
    shift = z_max.double()
    mass = torch.cumsum(torch.exp(values.double() - shift[:, None]), dim=1)
    reached = mass >= (top_p.double() * _exp_mass(z, shift))[:, None]
    p_on = (top_p < 1) & reached.any(dim=1)
    tau_p = values.gather(1, reached.int().argmax(dim=1)[:, None])[:, 0]
    tau = torch.maximum(tau_k, torch.where(p_on, tau_p, neg_inf))
    return torch.maximum(tau, torch.where(min_p > 0, z_max + torch.log(min_p), neg_inf))


def _exp_mass(z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """float64 ``exp(z - shift[:, None]).sum(dim=1)`` in one native pass (torch's float64 exp is 15x slower)."""
    if z.device.type != "cpu" or z.dtype != torch.float32:
        return torch.exp(z.double() - shift[:, None]).sum(dim=1)
    z, shift = z.contiguous(), shift.double().contiguous()
    mass = torch.empty(z.shape[0], dtype=torch.float64)
    _library().exp_mass(z.data_ptr(), shift.data_ptr(), z.shape[0], z.shape[1], mass.data_ptr(), torch.get_num_threads())
    return mass


def sample(logits, params, penalties=None, num_logprobs=None, *, validate: bool = True) -> SampleResult:
    """``sampling_ref.sample`` (same contract, same tokens) with the top-k thresholds and the draw above."""
    return sampling_ref.sample(logits, params, penalties, num_logprobs, validate=validate,
                               threshold=filter_threshold, draw=draw_tokens)
