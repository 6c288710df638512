"""Layers over the paged KV cache and the tensor-parallel linears."""
