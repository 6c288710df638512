"""The CPU KV pool: zeros from fresh pages, one independent tensor per layer and K/V."""

import gc

import pytest
import torch

from bare_engine.worker.forward import allocate_kv_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_pool_is_zero_contiguous_and_independent(dtype):
    caches = allocate_kv_cache(3, 5, 4, 2, 8, dtype, "cpu")
    assert len(caches) == 3
    tensors = [t for pair in caches for t in pair]
    for t in tensors:
        assert t.shape == (5, 4, 2, 8) and t.dtype == dtype and t.is_contiguous()
        assert t.data_ptr() % 64 == 0  # the kernels' vector loads stay within cache lines
        assert not t.any()
    for i, t in enumerate(tensors):
        t.fill_(i + 1)
    assert [int(t.float().mean()) for t in tensors] == list(range(1, 7))  # no two share memory


def test_cpu_pool_outlives_its_allocation_scope():
    k, v = allocate_kv_cache(1, 2, 16, 1, 4, torch.float32, torch.device("cpu"))[0]
    gc.collect()
    k[1, 3] = 2.5
    assert float(k.sum()) == 2.5 * 4 and not v.any()
