"""Incremental detokenization with stop strings, and the token-bytes table behind the fast stop check."""

from __future__ import annotations

import random


class Detokenizer:
    """Keeps a sequence's output tokens and finds stop strings in their text step by step.

    Without stop strings no text is decoded until the end (``final_text``). With stop
    strings, a ``TokenBytes`` table (byte-level BPE tokenizers) makes each step one set
    lookup: only a token whose bytes hold the last byte of a stop string can complete one,
    and only then are the last few bytes searched; other tokenizers decode a short window of
    recent tokens (prefix/read offsets, as vLLM does), withheld while it ends inside a
    multi-byte character. Either way each step costs O(1) tokens.
    """

    def __init__(self, tokenizer, stop_strings: list[str], skip_special_tokens: bool = True,
                 token_bytes: TokenBytes | None = None):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self.max_stop_len = max((len(s) for s in stop_strings), default=0)
        self.text = ""  # window path: the text so far
        self.prefix_offset = 0
        self.read_offset = 0
        # U+FFFD stands for invalid bytes in the text: such a stop string needs the text itself.
        usable = token_bytes is not None and stop_strings and not any("\ufffd" in s for s in stop_strings)
        self.token_bytes = token_bytes.table if usable else None
        self.stop_bytes = [s.encode("utf-8") for s in stop_strings]
        self.keep_bytes = max((len(s) for s in self.stop_bytes), default=1) - 1
        # Tokens that can complete a stop string: none without stop strings; None on the window path.
        if not stop_strings:
            self.enders = frozenset()
        else:
            self.enders = token_bytes.holding({s[-1] for s in self.stop_bytes}) if usable else None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str | None:
        """Append one token; return the stop string it completes, if any."""
        self.tokens.append(token_id)
        enders = self.enders
        if enders is not None:
            return self._search_bytes(token_id) if token_id in enders else None
        return self._add_window()

    def _search_bytes(self, token_id: int) -> str | None:
        # A UTF-8 stop string occurs in the (lossily) decoded text iff its bytes occur in the output's
        # bytes; a new occurrence ends inside the new token's bytes, so they hold its last byte.
        window = self._bytes_before(len(self.tokens) - 1) + self.token_bytes[token_id]
        for stop, stop_bytes in zip(self.stop_strings, self.stop_bytes):
            if stop_bytes in window:
                return stop
        return None

    def _bytes_before(self, end: int) -> bytes:
        """The last ``keep_bytes`` bytes of the output's first ``end`` tokens."""
        parts, size, table = [], 0, self.token_bytes
        while end > 0 and size < self.keep_bytes:
            end -= 1
            parts.append(table[self.tokens[end]])
            size += len(parts[-1])
        return b"".join(reversed(parts))[-self.keep_bytes:] if self.keep_bytes else b""

    def _add_window(self) -> str | None:
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


class TokenBytes:
    """The bytes each token id decodes to, for tokenizers whose decoding is byte concatenation.

    That holds for byte-level BPE (GPT-2, Llama 3, Qwen, ...): a Hugging Face fast tokenizer
    with a plain ``ByteLevel`` decoder and no clean-up of tokenization spaces. ``build``
    returns None for any other tokenizer, and also when a check of the table against the
    tokenizer's own ``decode`` on sample sequences finds a difference.
    """

    def __init__(self, table: list[bytes]):
        self.table = table
        self._by_byte: list[list[int]] | None = None  # byte value -> ids of the tokens holding it
        self._holding: dict[frozenset[int], frozenset[int]] = {}

    def holding(self, byte_values: set[int]) -> frozenset[int]:
        """Ids of the tokens whose bytes contain any of ``byte_values`` (cached per set of values)."""
        key = frozenset(byte_values)
        found = self._holding.get(key)
        if found is None:
            if self._by_byte is None:
                self._by_byte = [[] for _ in range(256)]
                for token_id, data in enumerate(self.table):
                    for value in set(data):
                        self._by_byte[value].append(token_id)
            found = frozenset().union(*(self._by_byte[v] for v in key))
            if len(self._holding) >= 256:  # stop strings come from requests: keep the cache bounded
                self._holding.clear()
            self._holding[key] = found
        return found

    @classmethod
    def build(cls, tokenizer, skip_special_tokens: bool, vocab_size: int = 0, num_checks: int = 200,
              seed: int = 0) -> TokenBytes | None:
        """``vocab_size``: the model's, when larger than the tokenizer's (ids past it decode to nothing)."""
        table = _byte_level_table(tokenizer, skip_special_tokens)
        if table is None:
            return None
        rng = random.Random(seed)
        checks = [list(range(i, min(i + 16, len(table)))) for i in range(0, len(table), max(1, len(table) // 64))]
        checks += [[rng.randrange(len(table)) for _ in range(rng.randint(1, 12))] for _ in range(num_checks)]
        for ids in checks:
            want = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
            if b"".join(table[i] for i in ids).decode("utf-8", "replace") != want:
                return None
        return cls(table + [b""] * (vocab_size - len(table)))


def byte_level_alphabet(tokenizer) -> dict[str, int] | None:
    """GPT-2's byte-level alphabet (character -> byte) when the tokenizer decodes through it, else None."""
    raw = getattr(tokenizer, "_tokenizer", None)
    if raw is None:
        return None
    try:
        from tokenizers import decoders
    except ImportError:
        return None
    if not isinstance(raw.decoder, decoders.ByteLevel):
        return None
    return _CHAR_TO_BYTE


def _byte_level_table(tokenizer, skip_special_tokens: bool) -> list[bytes] | None:
    char_to_byte = byte_level_alphabet(tokenizer)
    if char_to_byte is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    raw = tokenizer._tokenizer
    added = raw.get_added_tokens_decoder()
    table = []
    for token_id in range(raw.get_vocab_size(with_added_tokens=True)):
        token = raw.id_to_token(token_id)
        if token is None or (skip_special_tokens and token_id in added and added[token_id].special):
            table.append(b"")
            continue
        if all(c in char_to_byte for c in token):
            table.append(bytes(char_to_byte[c] for c in token))
        else:
            table.append(token.encode("utf-8"))  # the ByteLevel decoder keeps such tokens as they are
    return table


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


_CHAR_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}  # read-only; byte_level_alphabet returns it
