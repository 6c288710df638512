"""Triton kernels, each a pure function over tensors with a torch reference beside it.

The kernels' source lives in the repository's top-level ``kernels/`` directory, which has no
``__init__.py``: from the repository root ``import kernels`` can never find it before (and so
never shadow) the Hugging Face ``kernels`` package that transformers probes for. In a source
checkout (an editable install, or the root on ``sys.path``) this package reads its modules from
there; a wheel ships them inside this package (``package-dir`` in pyproject.toml).
"""

from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[2] / "kernels"
if _SOURCE.is_dir() and not (_SOURCE / "__init__.py").exists():
    __path__ = [str(_SOURCE)]
