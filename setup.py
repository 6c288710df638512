# Shim: metadata lives in pyproject.toml. bare_engine.kernels reads its modules from the
# top-level kernels/ directory (see package-dir there and bare_engine/kernels/__init__.py).
from setuptools import find_packages, setup

setup(packages=find_packages(include=["bare_engine", "bare_engine.*"]))
