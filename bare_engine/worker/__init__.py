"""Runs one model on its device: persistent batch state, the forward call, CUDA graphs."""
