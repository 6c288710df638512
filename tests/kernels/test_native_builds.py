"""Every native CPU kernel builds wherever a C compiler is on PATH, and the linear kernel runs wherever
the CPU has the instructions it needs: a source that stops compiling must fail here, not pass as
skipped kernel tests and an engine quietly on its torch fallbacks."""

from pathlib import Path

import pytest
import torch

from bare_engine.kernels import cpu_linear, native

SOURCES = sorted(p.stem for p in Path(native.__file__).parent.glob("cpu_*.c"))
pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


def cpu_flags() -> set[str]:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def test_the_kernels_are_all_there():
    assert SOURCES == ["cpu_attention", "cpu_fused", "cpu_linear", "cpu_sampling"]


@pytest.mark.parametrize("name", SOURCES)
def test_builds(name):
    lib = native.load(name)
    assert not isinstance(lib, str), f"{name}.c did not build: {lib}"


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="no AVX-512")
def test_the_linear_kernel_runs_where_the_cpu_has_the_instructions():
    assert cpu_linear.supported(torch.float32)
    assert cpu_linear.supported(torch.bfloat16) == ("avx512_bf16" in cpu_flags())
