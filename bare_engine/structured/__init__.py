"""Structured outputs: constrain generation to a JSON schema, regex, choice or grammar (xgrammar).

``params`` (what a request asks, vLLM's names), ``compiler`` (spec -> compiled grammar, cached per
model), ``matcher`` (one sequence's grammar state), ``bitmask`` (a batch's allowed-token mask).
"""

from bare_engine.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
