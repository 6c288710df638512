"""Triton kernels, each a pure function over tensors with a torch reference beside it.

Installed as ``bare_engine.kernels`` (never as a top-level ``kernels`` module).
"""
