"""A sample's text as it streams, equal in the end to the non-streamed text.

Tokens are decoded over a short window of recent tokens (prefix/read offsets, as vLLM
does), withheld while the window ends inside a multi-byte character. Text that could still
be the start of a stop string is withheld too: a stop string cuts the final text before
it, so anything sent that later turns out to begin one could not be taken back.
(The engine's Detokenizer only looks for stop strings; it keeps no text to stream.)
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


class TextStream:
    def __init__(self, tokenizer, stop_strings: list[str], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0
        self.num_sent = 0  # characters of text sent so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        """Feed new output tokens; return the text that is now safe to send."""
        self.tokens.extend(token_ids)
        prefix_text = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.tokens[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        safe = safe_length(self.text, self.stop_strings, self.num_sent)
        if safe <= self.num_sent:
            return ""
        delta = self.text[self.num_sent:safe]
        self.num_sent = safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the finished sample's text."""
        if not final_text.startswith(self.text[:self.num_sent]):
            logger.warning("streamed text diverged from the final text (tokenizer decodes non-incrementally)")
        return final_text[self.num_sent:]


def safe_length(text: str, stop_strings: list[str], start: int = 0) -> int:
    """Length of the prefix of ``text`` no stop string can cut: before any stop string it holds,
    and before a tail that is the beginning of one. ``start``: a prefix already known safe
    (no stop string begins in it)."""
    safe = len(text)
    for stop in stop_strings:
        found = text.find(stop, start)
        if found >= 0:
            safe = min(safe, found)
            continue
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                safe = min(safe, len(text) - k)
                break
    return safe


def sse(data: dict | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
