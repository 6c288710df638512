"""Constrained decoding to a fixed set of token sequences (e.g. the labels of an annotation task).

The sequences form a trie; at each step only the children of the node reached by the
output so far are allowed. A sequence that is a prefix of another ends with one of the
model's end tokens. The sampler's allowed-token mask enforces the choice, so the
logprobs it returns are those of the constrained distribution.
"""

from __future__ import annotations

_END = -1  # trie key marking that a complete sequence ends at this node


class TokenTrie:
    def __init__(self, sequences: list[list[int]], end_token_ids: set[int]):
        self.root: dict = {}
        self.end_token_ids = sorted(end_token_ids)
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            node[_END] = {}

    def _node(self, prefix: list[int]) -> dict | None:
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return None
        return node

    def allowed(self, prefix: list[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (end tokens where a sequence may end there too)."""
        node = self._node(prefix)
        if node is None:
            return []
        tokens = [t for t in node if t != _END]
        if _END in node and tokens:
            tokens += self.end_token_ids
        return tokens

    def is_complete(self, prefix: list[int]) -> bool:
        """True when ``prefix`` is a whole sequence that nothing longer extends."""
        node = self._node(prefix)
        return node is not None and _END in node and len(node) == 1

    def match(self, prefix: list[int]) -> list[int] | None:
        """The complete sequence ``prefix`` spells, ignoring a trailing end token."""
        if prefix and prefix[-1] in self.end_token_ids:
            prefix = prefix[:-1]
        node = self._node(prefix)
        return prefix if node is not None and _END in node else None
