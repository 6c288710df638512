"""Compiling StructuredOutputsParams to xgrammar grammars, one compiler per model, compiled grammars cached.

xgrammar was chosen by measurement (benchmarks/structured_library.py: on SmolLM2's 49k vocabulary it
fills a batch of 64 bitmasks about 10x faster than llguidance); vLLM uses it by default too.
"""

from __future__ import annotations

import json
import re

from bare_engine.errors import ConfigError, InvalidRequestError
from bare_engine.structured.params import StructuredOutputsParams


# Whitespace characters allowed between JSON tokens: unbounded, a weak model can loop on newlines
# until max_tokens (seen on the demo model); 8 still allows indented, pretty-printed JSON.
MAX_JSON_WHITESPACE = 8


def import_xgrammar():
    try:
        import xgrammar
    except ImportError:
        raise ConfigError(
            "structured outputs need the xgrammar package: pip install 'bare-engine[structured]'"
        ) from None
    return xgrammar


def choice_regex(choices: list[str]) -> str:
    # re.escape also escapes spaces, which xgrammar's regex reader warns about; a space needs none.
    return "(" + "|".join(re.escape(c).replace("\\ ", " ") for c in choices) + ")"


class GrammarCompiler:
    """One model's grammar compiler (its tokenizer's view, built on first use) and compiled-grammar cache."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int], cache_size: int = 256):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self.cache_size = cache_size
        self._compiler = None
        self._cache: dict[tuple, object] = {}

    def compiler(self):
        if self._compiler is None:
            xgr = import_xgrammar()
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.eos_ids or None)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler

    def compile(self, spec: StructuredOutputsParams):
        """The compiled grammar of ``spec``; InvalidRequestError naming the problem when it cannot compile."""
        key = spec.cache_key()
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._compile(spec)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            self._cache[key] = compiled
        return compiled

    def _compile(self, spec: StructuredOutputsParams):
        compiler = self.compiler()
        kind = spec.kind
        any_whitespace = not spec.disable_any_whitespace
        try:
            if kind == "json":
                schema = spec.json if isinstance(spec.json, str) else json.dumps(spec.json)
                return compiler.compile_json_schema(schema, any_whitespace=any_whitespace,
                                                    max_whitespace_cnt=MAX_JSON_WHITESPACE)
            if kind == "json_object":
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=any_whitespace,
                                                    max_whitespace_cnt=MAX_JSON_WHITESPACE)
            if kind == "regex":
                return compiler.compile_regex(spec.regex)
            if kind == "choice":
                return compiler.compile_regex(choice_regex(spec.choice))
            return compiler.compile_grammar(spec.grammar)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError/its own types, all "cannot compile"
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidRequestError(f"structured_outputs {kind} cannot be compiled: {message}") from None
