"""Torch reference sampler: the semantics every sampling kernel must match.

Also the engine's portable sampler (CPU, or any device without Triton), and the one
home of the shared types (SamplingTensors, PenaltyState, SampleResult) and of the
parameter validation; ``kernels/sampling.py`` imports them from here.

Order of operations, per row (all in float32):

1. Penalties on the raw logits ``x`` (vLLM semantics), from the row's PenaltyState
   slot (``penalty_rows``; a negative slot means no statistics). For tokens seen in
   the prompt or the output: ``x / rep`` if ``x > 0`` else ``x * rep``. Then
   ``x - frequency * count`` and, where ``count > 0``, ``x - presence``.
2. Logit bias: ``x + bias``. Allowed mask: forbidden tokens become ``-inf``.
   The result is the penalized logit ``l``.
3. Temperature: ``z = l / temperature``. Greedy rows (temperature 0) use ``z = l``.
4. Filtering (sampled rows only). Every filter is computed from the same full
   distribution ``p = softmax(z)`` (not renormalized between filters) and the kept
   set is the intersection, i.e. ``z >= tau`` with ``tau = max(tau_k, tau_p, tau_min)``:
   - top_k: ``tau_k`` is the k-th largest ``z``; ties at the boundary are kept.
     ``top_k <= 0`` or ``>= vocab`` disables it; above the number of finite
     tokens it keeps them all.
   - top_p: ``tau_p`` is the largest value t with ``sum(p[z >= t]) >= top_p``: the
     smallest set of highest-probability tokens with mass >= top_p, plus every
     token tied with its last member. If rounding leaves no such t, all are kept.
   - min_p: ``tau_min = max(z) + log(min_p)``, i.e. keep ``p >= min_p * max(p)``.
   Tokens with ``z = -inf`` are never kept; greedy rows ignore the filters.
5. Sample: Gumbel-max, ``argmax(z - log(E))`` over kept tokens, where
   ``E = -log(1 - v)`` is an exponential variate from a uniform ``v`` that is a pure
   function of (seed, position, token index): Philox4x32-10 exactly as Triton's
   ``tl.randint4x(seed, (position << 32) | (token >> 2))``, output ``token & 3``,
   ``v = (float32(r) + 0.5) * 2**-32``. So a seeded request draws the same tokens
   whatever else is in the batch. Greedy rows take ``argmax(l)`` (lowest index on
   exact ties, as torch.argmax).

Logprobs are the log-softmax of the distribution actually sampled from: over the
kept tokens of ``z`` for sampled rows (others are -inf), over all of ``l`` for greedy
rows. ``top_ids`` lists the n tokens of highest logprob, descending, ties by lowest
token index; slots beyond the number of tokens with a finite logprob hold id -1
and logprob -inf. Rows whose logits are all -inf or NaN give an undefined token.

Around these steps, outside the kernels: per-request logits processors run on the raw
logits before step 1 (``bare_engine/logits_processors.py``), and named sampling steps
(``bare_engine/sampling_steps.py``, e.g. top-nσ) between steps 3 and 4 on sampled rows:
such a row comes here as its filtered ``z'`` with temperature 1 and no penalties, bias or
mask, keeping its seed, position and filters, so it goes through the same seeded draw.

The uniforms match the kernel bit for bit; the Gumbel transform and the sums here
run in float64 so that the reference itself is batch-invariant (float32 reductions
on CPU can change order with the batch shape). Kernel and reference therefore agree
token for token except when two Gumbel scores, or a top_p cumulative mass and
top_p, differ by less than float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import KernelInputError

MAX_LOGPROBS = 20  # the most top logprobs a row can ask for

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
PHILOX_ROUNDS = 10


@dataclass
class SamplingTensors:
    """Per-row sampling parameters, one row per sequence, on the logits' device."""

    temperature: Tensor  # [B] float32, 0 => greedy row
    top_k: Tensor  # [B] int32, <= 0 or >= vocab => disabled
    top_p: Tensor  # [B] float32 in (0, 1], 1 => disabled
    min_p: Tensor  # [B] float32 in [0, 1], 0 => disabled
    repetition_penalty: Tensor  # [B] float32, 1 => off
    presence_penalty: Tensor  # [B] float32
    frequency_penalty: Tensor  # [B] float32
    seed: Tensor  # [B] int64
    position: Tensor  # [B] int64, index of the sampled token in the request's output
    penalty_rows: Tensor | None = None  # [B] int, row in the PenaltyState (< 0: none)
    logit_bias: Tensor | None = None  # [B, V] float32
    allowed_mask: Tensor | None = None  # [B, V] bool, False => forbidden


@dataclass
class SampleResult:
    token_ids: Tensor  # [B] int64
    logprobs: Tensor | None  # [B] float32, logprob of the chosen token
    top_ids: Tensor | None  # [B, n] int64, descending
    top_logprobs: Tensor | None  # [B, n] float32


class PenaltyState:
    """Device-resident token statistics per sequence slot, updated incrementally.

    ``counts[row, t]`` is how often token t appears in the output, ``prompt_mask[row, t]``
    whether it is in the prompt, and ``seen_bits`` packs ``prompt_mask | counts > 0``
    into 32-bit words so the kernel reads 1 bit per token instead of 5 bytes.
    """

    def __init__(self, max_rows: int, vocab_size: int, device) -> None:
        self.max_rows = max_rows
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.num_words = (vocab_size + 31) // 32
        self.counts = torch.zeros(max_rows, vocab_size, dtype=torch.int32, device=self.device)
        self.prompt_mask = torch.zeros(max_rows, vocab_size, dtype=torch.bool, device=self.device)
        self.seen_bits = torch.zeros(max_rows, self.num_words, dtype=torch.int32, device=self.device)
        self._bit_weights = 1 << torch.arange(32, dtype=torch.int64, device=self.device)

    def reset_row(self, row: int, prompt_token_ids: Tensor, output_token_ids: Tensor | None = None) -> None:
        """Start (or restart, after preemption) tracking the sequence in ``row``."""
        prompt = torch.as_tensor(prompt_token_ids, device=self.device).long()
        self.counts[row].zero_()
        self.prompt_mask[row].zero_()
        self.prompt_mask[row, prompt] = True
        if output_token_ids is not None:
            out = torch.as_tensor(output_token_ids, device=self.device).long()
            self.counts[row].index_add_(0, out, torch.ones_like(out, dtype=torch.int32))
        seen = self.prompt_mask[row] | (self.counts[row] > 0)
        padded = torch.zeros(self.num_words * 32, dtype=torch.bool, device=self.device)
        padded[: self.vocab_size] = seen
        self.seen_bits[row] = self._pack(padded.view(self.num_words, 32))

    def add_tokens(self, rows: Tensor, tokens: Tensor) -> None:
        """Count ``tokens[i]`` as a new output token of sequence slot ``rows[i]`` (no host sync).

        Rows and tokens must be valid indices; a row may appear more than once.
        """
        rows, tokens = rows.long(), tokens.long()
        ones = torch.ones_like(tokens, dtype=torch.int32)
        self.counts.index_put_((rows, tokens), ones, accumulate=True)
        # Recompute each touched word from the dense state: idempotent, so duplicate
        # (row, word) pairs in one call write the same value.
        words = tokens // 32
        cols = words[:, None] * 32 + torch.arange(32, device=self.device)
        valid = cols < self.vocab_size
        cols = cols.clamp(max=self.vocab_size - 1)
        seen = self.prompt_mask[rows[:, None], cols] | (self.counts[rows[:, None], cols] > 0)
        self.seen_bits[rows, words] = self._pack(seen & valid)

    def _pack(self, bits: Tensor) -> Tensor:
        value = (bits.long() * self._bit_weights).sum(-1)
        return (value - (value >= 2**31).long() * 2**32).to(torch.int32)


# ----------------------------------------------------------------------------- validation


def validate_sampling_tensors(
    logits: Tensor,
    params: SamplingTensors,
    penalties: PenaltyState | None = None,
    num_logprobs: int | None = None,
) -> None:
    """Raise KernelInputError on any bad shape, dtype, device or value.

    Value checks cost one device-to-host copy; callers that capture CUDA graphs
    validate once outside the graph and pass ``validate=False`` to ``sample``.
    """

    def bad(msg: str) -> None:
        raise KernelInputError(f"invalid sampling parameter: {msg}")

    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        bad("logits must be a 2-D floating-point tensor [batch, vocab]")
    batch, vocab = logits.shape
    if vocab < 1:
        bad("logits must have at least one column")
    if num_logprobs is not None and not (isinstance(num_logprobs, int) and 0 <= num_logprobs <= MAX_LOGPROBS):
        bad(f"num_logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {num_logprobs!r}")
    _check_shapes(logits, params, penalties, bad)
    if batch > 0:
        _check_values(logits, params, penalties, bad)


_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
_INT_FIELDS = ("top_k", "seed", "position")


def _check_shapes(logits: Tensor, params: SamplingTensors, penalties: PenaltyState | None, bad) -> None:
    batch, vocab = logits.shape
    for name in _FLOAT_FIELDS + _INT_FIELDS + ("penalty_rows",):
        value = getattr(params, name)
        if value is None and name == "penalty_rows":
            continue
        if not isinstance(value, Tensor) or value.shape != (batch,):
            bad(f"{name} must be a tensor of shape ({batch},)")
        if value.device != logits.device:
            bad(f"{name} is on {value.device}, logits on {logits.device}")
        integral = not value.dtype.is_floating_point and value.dtype != torch.bool
        if (name in _FLOAT_FIELDS) != (not integral):
            bad(f"{name} has dtype {value.dtype}")
    for name, dtype_ok in (("logit_bias", lambda d: d.is_floating_point), ("allowed_mask", lambda d: d == torch.bool)):
        value = getattr(params, name)
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.shape != (batch, vocab) or not dtype_ok(value.dtype):
            bad(f"{name} must be a [{batch}, {vocab}] tensor of the right dtype")
        if value.device != logits.device:
            bad(f"{name} is on {value.device}, logits on {logits.device}")
    if params.penalty_rows is not None and penalties is None:
        bad("penalty_rows given without a PenaltyState")
    if penalties is not None and penalties.vocab_size != vocab:
        bad(f"PenaltyState vocab {penalties.vocab_size} != logits vocab {vocab}")
    if penalties is not None and penalties.counts.device != logits.device:
        bad(f"PenaltyState is on {penalties.counts.device}, logits on {logits.device}")


def _check_values(logits: Tensor, params: SamplingTensors, penalties: PenaltyState | None, bad) -> None:
    p = params
    checks = {
        "temperature must be finite and >= 0": torch.isfinite(p.temperature) & (p.temperature >= 0),
        "top_p must be in (0, 1]": (p.top_p > 0) & (p.top_p <= 1),
        "min_p must be in [0, 1]": (p.min_p >= 0) & (p.min_p <= 1),
        "repetition_penalty must be finite and > 0": torch.isfinite(p.repetition_penalty) & (p.repetition_penalty > 0),
        "presence_penalty must be finite": torch.isfinite(p.presence_penalty),
        "frequency_penalty must be finite": torch.isfinite(p.frequency_penalty),
        "position must be in [0, 2**31)": (p.position >= 0) & (p.position < 2**31),
    }
    if p.penalty_rows is not None and penalties is not None:
        checks[f"penalty_rows must be < {penalties.max_rows}"] = p.penalty_rows < penalties.max_rows
    if p.logit_bias is not None:
        checks["logit_bias must be finite or -inf"] = (p.logit_bias < math.inf).all(dim=1)
    if p.allowed_mask is not None:
        checks["allowed_mask must allow at least one token per row"] = p.allowed_mask.any(dim=1)
    ok = torch.stack([c.all() for c in checks.values()]).cpu()
    if bool(ok.all()):
        return
    for (msg, rows_ok), good in zip(checks.items(), ok.tolist()):
        if not good:
            row = int((~rows_ok).nonzero()[0, 0])
            bad(f"{msg} (row {row})")


# ----------------------------------------------------------------------------- noise


def _umul32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of a * b for a 32-bit constant a and b in [0, 2**32)."""
    p_lo = a * (b & 0xFFFF)
    p_hi = a * (b >> 16)
    t = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (t >> 32), t & MASK32


def philox4x32(seed: Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, ...]:
    """Philox4x32-10 as Triton's ``tl.randint4x``: key = the seed's two 32-bit halves.

    Everything is int64 holding unsigned 32-bit values; the outputs are in [0, 2**32).
    """
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    c0, c1, c2, c3 = (c & MASK32 for c in (c0, c1, c2, c3))
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _umul32(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _umul32(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def random_bits(seed: Tensor, position: Tensor, token: Tensor) -> Tensor:
    """The 32 random bits of each (seed, position, token), broadcast together (int64)."""
    seed, position, token = torch.broadcast_tensors(seed.long(), position.long(), token.long())
    zero = torch.zeros_like(token)
    outs = philox4x32(seed, token >> 2, position, zero, zero)
    lane = token & 3
    return torch.where(lane == 0, outs[0], torch.where(lane == 1, outs[1], torch.where(lane == 2, outs[2], outs[3])))


def row_random_bits(seed: Tensor, position: Tensor, vocab: int) -> Tensor:
    """``random_bits`` of tokens 0..vocab-1 for each row [R], as [R, vocab], a quarter of the cost."""
    groups = torch.arange((vocab + 3) // 4, device=seed.device)
    counter, seed2 = torch.broadcast_tensors(groups[None, :], seed.long()[:, None])
    zero = torch.zeros_like(counter)
    outs = philox4x32(seed2, counter, position.long()[:, None].expand_as(counter), zero, zero)
    return torch.stack(outs, dim=-1).reshape(seed.shape[0], -1)[:, :vocab]


def _to_uniform(bits: Tensor) -> Tensor:
    return (bits.to(torch.float32) + 0.5) * 2.0**-32


def uniform_noise(seed: Tensor, position: Tensor, token: Tensor) -> Tensor:
    """``v = (float32(r) + 0.5) * 2**-32`` in (0, 1], float32, bit-identical to the kernel."""
    return _to_uniform(random_bits(seed, position, token))


# ----------------------------------------------------------------------------- processing


def penalized_logits(logits: Tensor, params: SamplingTensors, penalties: PenaltyState | None = None) -> Tensor:
    """Steps 1-2: penalties, bias and mask on the raw logits (float32 [B, V])."""
    x = logits.float()
    if penalties is not None and params.penalty_rows is not None:
        rows = params.penalty_rows.long()
        has_row = rows >= 0
        rows = rows.clamp(min=0)
        counts = torch.where(has_row[:, None], penalties.counts[rows], 0)
        seen = has_row[:, None] & (penalties.prompt_mask[rows] | (counts > 0))
        rep = params.repetition_penalty.float()[:, None]
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
        x = x - params.frequency_penalty.float()[:, None] * counts.float()
        x = torch.where(counts > 0, x - params.presence_penalty.float()[:, None], x)
    if params.logit_bias is not None:
        x = x + params.logit_bias.float()
    if params.allowed_mask is not None:
        x = x.masked_fill(~params.allowed_mask, -math.inf)
    return x


def scaled_logits(penalized: Tensor, params: SamplingTensors) -> Tensor:
    """Step 3: ``z = l / temperature`` (greedy rows keep ``l``)."""
    temp = params.temperature.float()
    return penalized / torch.where(temp > 0, temp, 1.0)[:, None]


def filter_threshold(z: Tensor, params: SamplingTensors) -> Tensor:
    """Step 4: per-row ``tau`` (float32 [B]); the kept set is ``z >= tau`` and finite.

    Sorting is fine here: this is the specification, not the fast path.
    """
    tau, rows = unfiltered_threshold(z, params)
    if rows.numel() > 0:
        top_k = params.top_k.long()
        tau[rows] = _thresholds(z[rows], top_k[rows], params.top_p[rows].float(), params.min_p[rows].float())
    return tau


def unfiltered_threshold(z: Tensor, params: SamplingTensors) -> tuple[Tensor, Tensor]:
    """``tau`` of -inf for every row (keep all finite tokens), and the rows a filter applies to."""
    batch, vocab = z.shape
    top_k = params.top_k.long()
    filtered = (params.temperature > 0) & (((top_k > 0) & (top_k < vocab)) | (params.top_p < 1) | (params.min_p > 0))
    return torch.full((batch,), -math.inf, dtype=torch.float32, device=z.device), filtered.nonzero()[:, 0]


def _thresholds(z: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    batch, vocab = z.shape
    z_sorted = torch.sort(z, dim=1, descending=True, stable=True).values
    n_finite = (z > -math.inf).sum(dim=1)
    neg_inf = torch.full((batch,), -math.inf, dtype=torch.float32, device=z.device)

    k_on = (top_k > 0) & (top_k < vocab) & (top_k <= n_finite)
    tau_k = z_sorted.gather(1, (top_k.clamp(1, vocab) - 1)[:, None])[:, 0]

    z_max = z_sorted[:, 0]
    e = torch.exp(z_sorted.double() - _safe_max(z_max).double()[:, None])
    cum = torch.cumsum(e, dim=1)
    reached = cum >= (top_p.double() * cum[:, -1])[:, None]
    p_on = (top_p < 1) & reached.any(dim=1)
    tau_p = z_sorted.gather(1, reached.int().argmax(dim=1)[:, None])[:, 0]

    tau_min = z_max + torch.log(min_p)
    tau = torch.maximum(torch.where(k_on, tau_k, neg_inf), torch.where(p_on, tau_p, neg_inf))
    return torch.maximum(tau, torch.where(min_p > 0, tau_min, neg_inf))


def _safe_max(z_max: Tensor) -> Tensor:
    return torch.where(z_max > -math.inf, z_max, 0.0)


def kept_mask(z: Tensor, tau: Tensor) -> Tensor:
    return (z >= tau[:, None]) & (z > -math.inf)


# ----------------------------------------------------------------------------- sampling


def sample(
    logits: Tensor,
    params: SamplingTensors,
    penalties: PenaltyState | None = None,
    num_logprobs: int | None = None,
    *,
    validate: bool = True,
    threshold=None,
    draw=None,
) -> SampleResult:
    """Sample one token per row of ``logits`` [B, V] (see the module docstring). ``threshold`` and
    ``draw``: other implementations of steps 4 and 5, this module's ``filter_threshold`` and
    ``draw_tokens`` (kernels/sampling_cpu.py has both)."""
    if validate:
        validate_sampling_tensors(logits, params, penalties, num_logprobs)
    penalized = penalized_logits(logits, params, penalties)
    z = scaled_logits(penalized, params)
    tau = (threshold or filter_threshold)(z, params)
    token_ids = (draw or draw_tokens)(z, tau, params)
    if num_logprobs is None:
        return SampleResult(token_ids, None, None, None)

    kept = kept_mask(z, tau)
    z64 = z.double()
    z_max = _safe_max(z.max(dim=1).values).double()
    mass = torch.where(kept, torch.exp(z64 - z_max[:, None]), 0.0).sum(dim=1)
    log_norm = z_max + torch.log(mass)
    chosen = z64.gather(1, token_ids[:, None])[:, 0]
    logprobs = (chosen - log_norm).float()
    if num_logprobs == 0:
        return SampleResult(token_ids, logprobs, None, None)

    ranked = torch.sort(torch.where(kept, z, -math.inf), dim=1, descending=True, stable=True)
    top_ids = ranked.indices[:, :num_logprobs]
    top_lp = (z64.gather(1, top_ids) - log_norm[:, None]).float()
    top_ids, top_lp = _pad_top(top_ids, top_lp, kept.gather(1, top_ids), num_logprobs)
    return SampleResult(token_ids, logprobs, top_ids, top_lp)


def _pad_top(top_ids: Tensor, top_lp: Tensor, top_kept: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Replace slots holding non-kept tokens by (-1, -inf) and widen to n columns."""
    batch, have = top_ids.shape
    ids = torch.full((batch, n), -1, dtype=torch.int64, device=top_ids.device)
    lps = torch.full((batch, n), -math.inf, dtype=torch.float32, device=top_ids.device)
    ids[:, :have] = torch.where(top_kept, top_ids, -1)
    lps[:, :have] = torch.where(top_kept, top_lp, -math.inf)
    return ids, lps


def draw_tokens(z: Tensor, tau: Tensor, params: SamplingTensors) -> Tensor:
    """Step 5: the Gumbel-max draw of each sampled row over its kept tokens; greedy rows take the
    argmax of ``z``, which for them is the penalized logits ``l`` (temperature 1 in ``scaled_logits``)."""
    drawn = _gumbel_argmax(z, kept_mask(z, tau), params)
    return torch.where(params.temperature == 0, z.argmax(dim=1), drawn)


def _gumbel_argmax(z: Tensor, kept: Tensor, params: SamplingTensors) -> Tensor:
    """argmax over kept tokens of ``z - log(E)``, noise drawn only for sampled rows."""
    tokens = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    rows = (params.temperature > 0).nonzero()[:, 0]
    if rows.numel() == 0:
        return tokens
    z, kept = z[rows], kept[rows]
    seed, position = params.seed[rows], params.position[rows]
    if int(kept.sum()) * 4 > kept.numel():  # dense: four tokens per Philox call
        v = _to_uniform(row_random_bits(seed, position, z.shape[1]))
        scores = z.double() - torch.log(-torch.log1p(-v.double()))
        scores = scores.masked_fill(~kept, -math.inf)
    else:
        r, c = kept.nonzero(as_tuple=True)
        v = uniform_noise(seed[r], position[r], c).double()
        scores = torch.full(z.shape, -math.inf, dtype=torch.float64, device=z.device)
        scores[r, c] = z[r, c].double() - torch.log(-torch.log1p(-v))
    tokens[rows] = scores.argmax(dim=1)
    return tokens
