# Shim: metadata lives in pyproject.toml. The package list is computed here because
# kernels/ is mapped into the bare_engine namespace (see package-dir there).
from setuptools import find_packages, setup

setup(packages=find_packages(include=["bare_engine", "bare_engine.*"]) + ["bare_engine.kernels"])
