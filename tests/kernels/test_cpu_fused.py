"""The decoder's native elementwise ops (kernels/cpu_fused.c) against their torch references
(kernels/fused_ref.py): RMSNorm with and without the residual add, SiLU-and-mul and rotary embedding."""

import pytest
import torch
from bare_engine.kernels import cpu_fused, fused_ref

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="no C compiler")

DTYPES = [torch.float32, torch.bfloat16]
ROWS = [1, 7, 300]  # 300 rows run on the OpenMP threads, the others on one


def randn(*shape, dtype, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def assert_close(got, expected):
    """float32: a few ulps. bfloat16: the same rounding as torch except where float32 differences of an
    ulp cross a rounding boundary (one bf16 ulp, rarely)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
        assert (got != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_with_and_without_residual(dtype, rows):
    x, residual, weight = randn(rows, 96, dtype=dtype), randn(rows, 96, dtype=dtype, seed=1), randn(96, dtype=dtype, seed=2)
    assert_close(cpu_fused.rms_norm(x, weight, 1e-5), fused_ref.rms_norm(x, weight, 1e-5))
    native_residual, ref_residual = residual.clone(), residual.clone()
    out, new_residual = cpu_fused.rms_norm(x, weight, 1e-6, native_residual)
    expected, expected_residual = fused_ref.rms_norm(x, weight, 1e-6, ref_residual)
    assert new_residual is native_residual  # updated in place, as the reference does
    assert torch.equal(new_residual, expected_residual) and torch.equal(new_residual, x + residual)
    assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_and_mul(dtype, rows):
    gate_up = randn(rows, 2 * 160, dtype=dtype, scale=4.0)  # wide enough to reach silu's saturated tails
    assert_close(cpu_fused.silu_and_mul(gate_up), fused_ref.silu_and_mul(gate_up))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rotate_in_place_on_head_slices_of_a_fused_row(dtype, rows):
    heads, kv_heads, head_dim = 3, 1, 32
    qkv = randn(rows, (heads + 2 * kv_heads) * head_dim, dtype=dtype)
    original = qkv.clone()
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.reshape(rows, heads, head_dim), k.reshape(rows, kv_heads, head_dim)
    angles = randn(rows, 1, head_dim // 2, dtype=dtype, seed=1)
    cos, sin = angles.cos(), angles.sin()
    expected_q, expected_k = fused_ref.rotate(q.clone(), cos, sin), fused_ref.rotate(k.clone(), cos, sin)
    assert_close(cpu_fused.rotate(q, cos, sin), expected_q)
    assert_close(cpu_fused.rotate(k, cos, sin), expected_k)
    assert_close(q, expected_q)  # in place, in qkv
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], original[:, (heads + kv_heads) * head_dim:])  # v untouched


def test_same_result_whatever_the_thread_count():
    x, weight, gate_up = randn(300, 256, dtype=torch.float32), randn(256, dtype=torch.float32), randn(300, 512, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_fused.rms_norm(x, weight, 1e-5), cpu_fused.silu_and_mul(gate_up)
        torch.set_num_threads(2)
        two = cpu_fused.rms_norm(x, weight, 1e-5), cpu_fused.silu_and_mul(gate_up)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))  # each row is one thread's, in one order


def test_other_inputs_take_the_reference():
    """float16 and non-contiguous inputs are computed by the reference, not rejected."""
    x, weight = randn(4, 64, dtype=torch.float16), randn(64, dtype=torch.float16)
    assert torch.equal(cpu_fused.rms_norm(x, weight, 1e-5), fused_ref.rms_norm(x, weight, 1e-5))
    gate_up = randn(64, 8, dtype=torch.float32).t()  # not contiguous
    assert torch.equal(cpu_fused.silu_and_mul(gate_up), fused_ref.silu_and_mul(gate_up))
    q, angles = randn(2, 2, 16, dtype=torch.float16), randn(2, 1, 8, dtype=torch.float16)
    assert torch.equal(cpu_fused.rotate(q, angles.cos(), angles.sin()), fused_ref.rotate(q, angles.cos(), angles.sin()))
