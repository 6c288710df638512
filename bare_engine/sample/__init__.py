"""Sampling: the sampler, named sampling steps, logits processors and token constraints."""
