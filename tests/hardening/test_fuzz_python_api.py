"""Hypothesis on SamplingParams and prompt normalisation (issue 30): whatever the values, a request is
either served (every sample finishes with stop or length, its tokens in the vocabulary) or rejected
with InvalidRequestError / InvalidSamplingParamsError, and nothing of a rejected call stays queued.

Short and bounded for CI: a fixed number of examples (FUZZ_EXAMPLES), derandomized, no database.
"""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bare_engine import LLM, SamplingParams
from bare_engine.errors import InvalidRequestError, InvalidSamplingParamsError
from bare_engine.testing import make_model_dir

FUZZ_EXAMPLES = 300
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
REJECTED = (InvalidRequestError, InvalidSamplingParamsError)

# Values at and past the edges of what each field's storage holds, and of the wrong type.
EDGE_INTS = [0, 1, -1, 2, True, False, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
             2**70, -(2**70), 1.0, 2.5, "3", None]
EDGE_FLOATS = [0.0, 1.0, -0.0, 0.5, 1e-45, 1e-8, 2.0, -1.0, 1e308, -1e308, 3.4e38, 3.5e38, math.inf, -math.inf,
               math.nan, True, 1, "0.5", None]
# Any text, and text built from lone surrogates (hypothesis' own text never holds them).
TEXT = st.one_of(st.text(max_size=8),
                 st.lists(st.sampled_from(["\ud800", "\udfff", "a", " ", "\u00e9", "\U0001F600", "\x00"]),
                          max_size=4).map("".join))


def edge(values, small=None):
    options = [st.sampled_from(values)]
    if small is not None:
        options.append(small)
    return st.one_of(*options)


PARAMS = st.fixed_dictionaries({}, optional={
    "n": edge([1, 2, 3, 0, -1, True, 4097, 2**70, 1.5]),
    "temperature": edge(EDGE_FLOATS, st.floats(0, 3)),
    "top_p": edge(EDGE_FLOATS, st.floats(0, 1.2)),
    "top_k": edge(EDGE_INTS, st.integers(-3, 600)),
    "min_p": edge(EDGE_FLOATS, st.floats(0, 1)),
    "repetition_penalty": edge(EDGE_FLOATS, st.floats(0, 3)),
    "presence_penalty": edge(EDGE_FLOATS, st.floats(-3, 3)),
    "frequency_penalty": edge(EDGE_FLOATS, st.floats(-3, 3)),
    "max_tokens": edge([1, 2, 3, 0, -1, True, 2**64, 2.0]),
    "seed": edge(EDGE_INTS, st.integers(-(2**64), 2**64)),
    "logprobs": edge([None, 0, 1, 5, 20, 21, -1, True]),
    "stop": st.one_of(st.none(), TEXT, st.lists(TEXT, max_size=3), st.just([1])),
    "stop_token_ids": st.one_of(st.none(), st.lists(edge(EDGE_INTS, st.integers(-5, 600)), max_size=3)),
    "logit_bias": st.one_of(st.none(), st.dictionaries(edge(EDGE_INTS, st.integers(-5, 600)),
                                                       edge(EDGE_FLOATS, st.floats(-100, 100)), max_size=3)),
    "allowed_token_ids": st.one_of(st.none(), st.lists(edge(EDGE_INTS, st.integers(-5, 600)), max_size=4)),
    "ignore_eos": st.booleans(),
})
PROMPT = st.one_of(
    TEXT,
    st.lists(edge(EDGE_INTS, st.integers(-5, 600)), max_size=6),
    st.fixed_dictionaries({"prompt": st.one_of(TEXT, st.integers())}),
    st.fixed_dictionaries({"prompt_token_ids": st.lists(edge(EDGE_INTS, st.integers(0, 600)), max_size=4)}),
    st.dictionaries(st.sampled_from(["prompt", "prompt_token_ids", "other"]), st.just("x"), max_size=2),
    st.lists(TEXT, max_size=3),
    st.none(),
    st.integers(),
)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    with LLM(make_model_dir(tmp_path_factory.mktemp("m"), "llama"), max_num_seqs=8, max_model_len=64) as llm:
        yield llm


def served_or_rejected(llm, prompts, make_params):
    """Run one call; the outputs when served, None when rejected with a bare_engine input error."""
    try:
        params = make_params()
        outputs = llm.generate(prompts, params, use_tqdm=False)
    except REJECTED:
        assert not llm.engine.has_unfinished_requests()
        return None
    vocab = llm.engine.runners["default"].config.vocab_size
    for out in outputs:
        for c in out.outputs:
            assert c.finish_reason in ("stop", "length"), c
            assert all(0 <= t < vocab for t in c.token_ids)
    assert not llm.engine.has_unfinished_requests()
    return outputs


@FUZZ
@given(kwargs=PARAMS)
def test_sampling_params_are_served_or_rejected(llm, kwargs):
    kwargs.setdefault("max_tokens", 3)
    served_or_rejected(llm, [[5, 6, 7]], lambda: SamplingParams(**kwargs))


@FUZZ
@given(prompts=PROMPT)
def test_prompts_are_served_or_rejected(llm, prompts):
    served_or_rejected(llm, prompts, lambda: SamplingParams(max_tokens=2, temperature=0.0))


MESSAGES = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                    "content": st.one_of(TEXT, st.none(), st.integers())}), max_size=3),
    st.lists(st.one_of(st.none(), TEXT, st.dictionaries(TEXT, TEXT, max_size=2)), max_size=2),
    st.none(),
)


@FUZZ
@given(messages=MESSAGES)
def test_chats_are_served_or_rejected(llm, messages):
    params = SamplingParams(max_tokens=2, temperature=0.0)
    try:
        outputs = llm.chat(messages, params, use_tqdm=False,
                           chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    except REJECTED:
        assert not llm.engine.has_unfinished_requests()
        return
    assert all(c.finish_reason in ("stop", "length") for out in outputs for c in out.outputs)


@FUZZ
@given(kwargs=PARAMS, name=st.sampled_from(["top_k", "seed", "temperature", "stop", "stop_token_ids"]),
       value=st.one_of(st.sampled_from(EDGE_INTS + EDGE_FLOATS), TEXT))
def test_params_changed_after_construction_are_checked_again(llm, kwargs, name, value):
    def make():
        params = SamplingParams(**{"max_tokens": 2, **kwargs})
        setattr(params, name, value)
        return params

    served_or_rejected(llm, [[5, 6, 7]], make)


# Seeds that found bugs, kept as regression cases (issue 30).
FOUND = [
    dict(top_k=2**63),  # overflowed in Sampler.add_row, killing the step
    dict(top_k=4294967297),  # wrapped to top_k=1
    dict(seed=2**70), dict(seed=-(2**70)), dict(seed=2**63),  # all gave seed 0's text
    dict(temperature=1e308),  # became inf in float32
    dict(temperature=True),  # a bool taken as a number
    dict(stop=["\ud800"]),  # a lone surrogate in a stop string
    dict(stop_token_ids=[10**6]),  # outside the vocabulary
    dict(logit_bias={0: math.nan}),
    dict(repetition_penalty=1e-45),  # x / penalty overflowed the logits
]


@pytest.mark.parametrize("kwargs", FOUND, ids=[next(iter(k)) + str(i) for i, k in enumerate(FOUND)])
def test_values_the_fuzzer_found_are_rejected(llm, kwargs):
    assert served_or_rejected(llm, [[5, 6, 7]], lambda: SamplingParams(max_tokens=2, **kwargs)) is None


def test_a_lone_surrogate_in_a_chat_message_is_rejected(llm):
    """Found by test_chats_are_served_or_rejected: a TypeError from the tokenizer before issue 30."""
    with pytest.raises(InvalidRequestError, match="not valid Unicode"):
        llm.chat([{"role": "user", "content": "hi \ud800"}], SamplingParams(max_tokens=2), use_tqdm=False,
                 chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert not llm.engine.has_unfinished_requests()
