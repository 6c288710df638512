"""A token's raw bytes for logprobs' ``bytes`` field: a token holding part of a multi-byte character
has bytes of its own, which its decoded text (a replacement character) has lost."""

from __future__ import annotations

import re

from bare_engine.engine.detokenizer import byte_level_alphabet

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback tokens


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes ``token_id`` stands for: byte-level BPE through GPT-2's alphabet, SentencePiece byte
    tokens as their byte, anything else as its decoded text."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(token, str):
        char_to_byte = byte_level_alphabet(tokenizer)
        if char_to_byte is not None and all(c in char_to_byte for c in token):
            return bytes(char_to_byte[c] for c in token)
        if match := _BYTE_TOKEN.fullmatch(token):
            return bytes([int(match.group(1), 16)])
    return tokenizer.decode([token_id], skip_special_tokens=False).encode()
