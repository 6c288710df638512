"""Tokenizer loading and incremental detokenization with stop strings."""

from __future__ import annotations

from pathlib import Path

from bare_engine.errors import ModelLoadError


def load_tokenizer(model_dir: Path):
    """The model's own tokenizer, from local files only (never a hub call)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types here; all mean "no usable tokenizer"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {first_line}") from None


class Detokenizer:
    """Turns a sequence's output tokens into text step by step, and finds stop strings.

    Text is decoded over a short window of recent tokens (prefix/read offsets, as
    vLLM does) so each step costs O(1) tokens, and is withheld while the window ends
    inside a multi-byte character.
    """

    def __init__(self, tokenizer, stop_strings: list[str], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.skip_special_tokens = skip_special_tokens
        self.max_stop_len = max((len(s) for s in stop_strings), default=0)
        self.text = ""
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str | None:
        """Append one token; return the stop string it completes, if any."""
        self.tokens.append(token_id)
        prefix_text = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.tokens[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return None
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        start = max(0, len(self.text) - self.max_stop_len + 1)
        self.text += delta
        for stop in self.stop_strings:
            if stop in self.text[start:]:
                return stop
        return None

    def final_text(self, stop: str | None, include_stop: bool) -> str:
        """Full decode of the output, cut at the first stop string when one ended the sequence."""
        text = self._decode(self.tokens)
        if stop is not None:
            pos = text.find(stop)
            if pos >= 0:
                text = text[: pos + len(stop)] if include_stop else text[:pos]
        return text
