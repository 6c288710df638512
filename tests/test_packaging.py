"""kernels/ ships as bare_engine.kernels, never as a top-level `kernels` module."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import bare_engine.kernels


def test_kernels_live_in_the_bare_engine_namespace():
    folder = Path(bare_engine.kernels.__file__).parent
    assert folder.name == "kernels" and (folder / "attention_ref.py").is_file()
    spec = importlib.util.find_spec("kernels")
    assert spec is None or Path(spec.origin).parent != folder


def test_no_top_level_kernels_module_outside_the_repo(tmp_path):
    # transformers probes for an installed `kernels` package; ours must not answer.
    code = "import importlib.util, bare_engine.kernels.sampling_ref; print(importlib.util.find_spec('kernels'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
