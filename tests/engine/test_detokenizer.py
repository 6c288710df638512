"""Stop strings found through the token-bytes table equal the window decoder's, token for token."""

import random

import pytest

from bare_engine.engine.detokenizer import Detokenizer, TokenBytes
from bare_engine.testing import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def first_stop(detok, tokens):
    for i, t in enumerate(tokens):
        stop = detok.add(t)
        if stop is not None:
            return i, stop
    return None


@pytest.mark.parametrize("skip_special", [True, False])
def test_bytes_path_finds_the_same_stops_as_the_window_path(tokenizer, skip_special):
    table = TokenBytes.build(tokenizer, skip_special)
    assert table is not None  # byte-level BPE: the fast path applies
    rng = random.Random(0)
    vocab = len(tokenizer)
    found = 0
    for _ in range(150):
        tokens = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        text = tokenizer.decode(tokens, skip_special_tokens=skip_special)
        stops = ["zzq\u00e9", "\n\n\n"]
        if len(text) > 2:  # a stop string that does occur, ending somewhere inside the text
            a = rng.randrange(len(text) - 1)
            stops.insert(rng.randrange(3), text[a:a + rng.randint(1, 6)])
        window = Detokenizer(tokenizer, stops, skip_special)
        fast = Detokenizer(tokenizer, stops, skip_special, table)
        expected = first_stop(window, tokens)
        assert first_stop(fast, tokens) == expected, (tokens, stops)
        found += expected is not None
        stop = expected[1] if expected else None
        assert fast.final_text(stop, False) == window.final_text(stop, False)
    assert found > 50


def test_no_stop_strings_means_no_decoding_until_the_end(tokenizer, monkeypatch):
    detok = Detokenizer(tokenizer, [], True, TokenBytes.build(tokenizer, True))
    calls = []
    monkeypatch.setattr(detok, "_decode", lambda ids: calls.append(list(ids)) or tokenizer.decode(ids))
    for t in [40, 41, 42, 300]:
        assert detok.add(t) is None
    assert not calls
    assert detok.final_text(None, False) == tokenizer.decode([40, 41, 42, 300], skip_special_tokens=True)


def test_tokens_past_the_tokenizer_vocabulary_decode_to_nothing(tokenizer):
    table = TokenBytes.build(tokenizer, True, vocab_size=len(tokenizer) + 10)
    assert len(table.table) == len(tokenizer) + 10 and table.table[-1] == b""


def test_other_decoders_fall_back_to_the_window_path(tokenizer):
    from tokenizers import decoders

    clone = make_tokenizer()
    clone._tokenizer.decoder = decoders.Metaspace()
    assert TokenBytes.build(clone, True) is None


def test_only_tokens_holding_a_stop_strings_last_byte_search_the_tail(tokenizer, monkeypatch):
    table = TokenBytes.build(tokenizer, True)
    stops = ["ab", "\n\n"]
    enders = table.holding({ord("b"), ord("\n")})
    assert enders == {i for i, data in enumerate(table.table) if b"b" in data or b"\n" in data}
    detok = Detokenizer(tokenizer, stops, True, table)
    searched = []
    real = detok._bytes_before
    monkeypatch.setattr(detok, "_bytes_before", lambda end: searched.append(end) or real(end))
    rng = random.Random(1)
    tokens = [rng.randrange(len(tokenizer)) for _ in range(300)]
    for t in tokens:
        if detok.add(t) is not None:
            break
    checked = tokens[:len(detok.tokens)]
    assert searched == [i for i, t in enumerate(checked) if t in enders]
    assert len(searched) < len(checked)  # most tokens cost one set lookup
