"""One sequence's grammar state: it advances on each accepted token (never on KV), so it survives
preemption and recompute unchanged."""

from __future__ import annotations

from bare_engine.structured.compiler import import_xgrammar


class GrammarState:
    def __init__(self, compiled_grammar):
        self.matcher = import_xgrammar().GrammarMatcher(compiled_grammar)

    def accept(self, token: int) -> bool:
        """Advance on an accepted token; False when the grammar does not allow it."""
        return self.matcher.accept_token(token)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted: the sequence ends."""
        return self.matcher.is_terminated()
