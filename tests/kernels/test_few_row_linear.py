"""The few-row linear on the CPU (kernels/cpu_linear.c) against F.linear, and when it applies."""

import pytest
import torch
from torch.nn import functional as F

from bare_engine.kernels import cpu_linear

pytestmark = pytest.mark.skipif(cpu_linear.max_rows() == 0, reason="no C compiler")


# every row count up to each dtype's limit (cpu_linear.ROWS_FASTER)
@pytest.mark.parametrize("dtype, rows", [(torch.float32, 1), (torch.float32, 2), (torch.bfloat16, 1),
                                         (torch.bfloat16, 2), (torch.bfloat16, 3), (torch.bfloat16, 4)])
@pytest.mark.parametrize("n, k", [(96, 64), (50, 576), (7, 40)])  # 40: no 32-wide bf16 blocks, the plain loop
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(dtype, rows, n, k, bias):
    gen = torch.Generator().manual_seed(n + k)
    x, w = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    assert cpu_linear.usable(x, w)
    got = cpu_linear.linear(x, w, b)
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())  # exact products, then round
    assert got.dtype == dtype and got.shape == (rows, n)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance * k ** 0.5)


def test_applies_to_few_packed_rows_only():
    w = torch.randn(8, 16)
    assert cpu_linear.row_limit(torch.float32) == 2 and cpu_linear.row_limit(torch.bfloat16) == 4
    assert cpu_linear.usable(torch.randn(2, 16), w)
    assert not cpu_linear.usable(torch.randn(3, 16), w)  # more rows: oneDNN's packed GEMM is as fast
    assert cpu_linear.usable(torch.randn(4, 16).bfloat16(), w.bfloat16())
    assert not cpu_linear.usable(torch.randn(5, 16).bfloat16(), w.bfloat16())
    assert not cpu_linear.usable(torch.randn(1, 16).half(), w.half())
    assert not cpu_linear.usable(torch.randn(16, 2).t()[:1], w)  # not contiguous
    assert not cpu_linear.usable(torch.randn(1, 16), w.bfloat16())  # mixed dtypes
