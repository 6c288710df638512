"""Sampling: the torch reference against first principles, the Triton kernel against the
reference (under TRITON_INTERPRET=1 without a GPU, hence the small vocabularies).

How the kernel's sampling distribution is established without thousands of slow
interpreted draws: its kept set equals the reference's, its noise bits equal the
reference's Philox bit for bit, and its tokens equal the reference's row for row; the
reference's draws are then checked against the exact distribution with many seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.kernels import sampling as tri
from bare_engine.kernels import sampling_ref as ref


def make_params(batch: int, **columns) -> ref.SamplingTensors:
    """Neutral parameters (temperature 1, no filters, no penalties), overridden per column."""
    base = dict(
        temperature=torch.ones(batch),
        top_k=torch.zeros(batch, dtype=torch.int32),
        top_p=torch.ones(batch),
        min_p=torch.zeros(batch),
        repetition_penalty=torch.ones(batch),
        presence_penalty=torch.zeros(batch),
        frequency_penalty=torch.zeros(batch),
        seed=torch.arange(batch, dtype=torch.int64) * 7919 + 11,
        position=torch.zeros(batch, dtype=torch.int64),
    )
    for name, value in columns.items():
        if isinstance(value, torch.Tensor) or value is None:
            base[name] = value
        else:
            dtype = base[name].dtype
            base[name] = torch.as_tensor(value, dtype=dtype).expand(batch).clone()
    return ref.SamplingTensors(**base)


def select_rows(params: ref.SamplingTensors, rows) -> ref.SamplingTensors:
    rows = torch.as_tensor(rows)
    fields = {name: getattr(params, name) for name in params.__dataclass_fields__}
    return ref.SamplingTensors(**{k: (v[rows] if v is not None else None) for k, v in fields.items()})


def processed(logits, params, penalties=None):
    return ref.scaled_logits(ref.penalized_logits(logits, params, penalties), params)


def random_params(batch: int, vocab: int, gen: torch.Generator) -> ref.SamplingTensors:
    """A mixed batch: greedy rows, plain sampling, and every filter combination."""
    pick = torch.randint(0, 8, (batch,), generator=gen)
    temperature = torch.where(pick == 0, 0.0, 0.3 + 1.5 * torch.rand(batch, generator=gen))
    top_k = torch.where(pick % 2 == 1, torch.randint(1, 60, (batch,), generator=gen), 0).int()
    top_p = torch.where((pick == 2) | (pick >= 6), 0.2 + 0.79 * torch.rand(batch, generator=gen), 1.0)
    min_p = torch.where((pick == 4) | (pick == 7), 0.3 * torch.rand(batch, generator=gen), 0.0)
    return make_params(batch, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       seed=torch.randint(-(2**40), 2**40, (batch,), generator=gen),
                       position=torch.randint(0, 5000, (batch,), generator=gen))


def kernel_kept(logits, params, penalties=None, **kw):
    result, tau = tri._sample(logits, params, penalties, None, **kw)
    return ref.kept_mask(processed(logits, params, penalties), tau), result


def ref_kept(logits, params, penalties=None):
    z = processed(logits, params, penalties)
    return ref.kept_mask(z, ref.filter_threshold(z, params))


# ----------------------------------------------------------------------------- noise


@triton.jit
def _randint4x_kernel(seed_ptr, offset_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), tl.load(offset_ptr + offs))
    for lane, r in tl.static_range(4), (r0, r1, r2, r3):
        pass


def test_reference_philox_matches_triton_randint4x():
    gen = torch.Generator().manual_seed(1)
    n = 64
    for seed in (0, 1, -5, 2**40 + 7, -(2**62), 2**63 - 1):
        position = torch.randint(0, 2**31, (n,), generator=gen)
        counter = torch.randint(0, 2**30, (n,), generator=gen)
        out = torch.empty(4, n, dtype=torch.int64)
        _randint4x_kernel[(1,)](torch.tensor([seed]), (position << 32) | counter, out, N=n)
        zero = torch.zeros_like(counter)
        expected = torch.stack(ref.philox4x32(torch.tensor(seed).expand(n), counter, position, zero, zero))
        assert torch.equal(out, expected), seed
