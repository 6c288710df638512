"""The CPU linear over a decode step's rows (kernels/cpu_linear.c, weights packed into panels) against
F.linear, row by row independent of the batch, and when it applies."""

import pytest
import torch
from torch.nn import functional as F

from bare_engine.kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.supported(torch.float32), reason="no C compiler or no AVX-512")
DTYPES = [torch.float32] + ([torch.bfloat16] if cpu_linear.supported(torch.bfloat16) else [])


# rows: one tile, a full tile (12), uneven tiles (13 -> 7 + 6, 25), the limit; n: partial panels and tiles
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 5, 12, 13, 25, cpu_linear.ROW_LIMIT])
@pytest.mark.parametrize("n, k", [(96, 64), (50, 576), (7, 40), (33, 18)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(dtype, rows, n, k, bias):
    gen = torch.Generator().manual_seed(n + k + rows)
    x, w = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    packed = cpu_linear.pack(w)
    assert packed is not None and cpu_linear.usable(x, packed)
    got = cpu_linear.linear(x, packed, b)
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())  # exact products, then round
    assert got.dtype == dtype and got.shape == (rows, n) and got.is_contiguous()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance * k ** 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_row_does_not_depend_on_its_batch(dtype):
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(40, 96, generator=gen).to(dtype), torch.randn(80, 96, generator=gen).to(dtype)
    packed = cpu_linear.pack(w)
    whole = cpu_linear.linear(x, packed)
    for size in (1, 5, 13):  # other tile splits of the same rows
        for start in range(0, 40, size):
            assert torch.equal(cpu_linear.linear(x[start:start + size], packed), whole[start:start + size])


def test_applies_to_a_decode_steps_rows_only():
    w = torch.randn(8, 16)
    packed = cpu_linear.pack(w)
    assert cpu_linear.usable(torch.randn(cpu_linear.ROW_LIMIT, 16), packed)
    assert not cpu_linear.usable(torch.randn(cpu_linear.ROW_LIMIT + 1, 16), packed)  # prefill: oneDNN
    assert not cpu_linear.usable(torch.randn(16, 2).t()[:1], packed)  # not contiguous
    assert not cpu_linear.usable(torch.randn(1, 16).bfloat16(), packed)  # another dtype
    assert not cpu_linear.usable(torch.randn(1, 15), packed)  # another row length
    assert cpu_linear.pack(w.half()) is None
    assert cpu_linear.pack(torch.randn(8, 15).bfloat16()) is None  # bfloat16 panels hold pairs of inputs
