"""Prompt templates: the default renderings (the demo models are trained on them) and parsing."""

from __future__ import annotations

import pytest

from bare_engine.errors import ConfigError
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates

SHOTS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "#### 7"},
         {"question": "A box of 12 pens {big}. Sara takes 5?", "answer": "#### 7"}]


def test_default_base_prompt_ends_with_an_open_start_marker():
    assert Templates().base("Math.", SHOTS) == (
        "Math.\n\n"
        "<example>\nQuestion: Tom has 3 apples and buys 4. How many?\nAnswer: #### 7\n</example>\n\n"
        "<example>\nQuestion: A box of 12 pens {big}. Sara takes 5?\nAnswer: #### 7\n</example>\n\n"
        "<example>\n"
    )


def test_default_refine_and_instruct_messages():
    t = Templates()
    examples = t.render_examples(SHOTS)
    cand = {"question": "Q?", "answer": "A"}
    assert t.refine("Math.", SHOTS, cand) == (
        f"Math.\n\nHere are some examples:\n\n{examples}\n\nImprove the following example. Fix any errors, "
        "make it unambiguous, keep its theme, and match the style of the examples. Start your response with "
        "the question.\n\n<example>\nQuestion: Q?\nAnswer: A\n</example>"
    )
    assert t.instruct("Math.", SHOTS) == (
        f"Math.\n\nHere are some examples:\n\n{examples}\n\nWrite one new example in the same format. "
        "Start your response with the question."
    )
    assert "#### <final number>" in DEFAULT_TASK


def test_stop_string_is_the_stripped_end_marker():
    assert Templates().stop_string == "</example>"
    assert Templates(end_marker="\n\n").stop_string == "\n\n"


@pytest.mark.parametrize(
    "text, fields, reason",
    [
        ("Question: What is 2+2?\nAnswer: #### 4\n", {"question": "What is 2+2?", "answer": "#### 4"}, None),
        ("  Question: a\nAnswer: b\n</example>\n<example>more", {"question": "a", "answer": "b"}, None),
        ("Sure! Here it is.\nQuestion: a\nAnswer: b", {"question": "a", "answer": "b"}, None),
        ("Answer: b", None, "missing:question"),
        ("Question: a only", None, "missing:answer"),
        ("Question:   \nAnswer: b", None, "empty:question"),
        ("Question: a\nAnswer:\n</example>", None, "empty:answer"),
        ("", None, "missing:question"),
    ],
)
def test_parse_with_reason(text, fields, reason):
    t = Templates()
    assert t.parse_with_reason(text) == (fields, reason)
    assert t.parse(text) == fields


def test_rendered_example_parses_back():
    t = Templates()
    rendered = t.render_example(SHOTS[0])
    assert t.parse(rendered[len(t.start_marker):]) == SHOTS[0]


def test_fields_are_parsed_in_the_order_of_the_example():
    t = Templates(field_markers={"answer": "Answer:", "question": "Question:"})
    assert t.parse("Question: a\nAnswer: b") == {"question": "a", "answer": "b"}
    flipped = Templates(example="Answer: {answer}\nQuestion: {question}")
    assert flipped.parse("Answer: b\nQuestion: a") == {"answer": "b", "question": "a"}
    assert flipped.parse_with_reason("Question: a\nAnswer: b") == (None, "missing:question")


def test_validate_accepts_defaults_and_rejects_mismatches():
    Templates().validate(["question", "answer"])
    with pytest.raises(ConfigError, match="unknown field {answer}"):
        Templates().validate(["question", "solution"])
    with pytest.raises(ConfigError, match="unknown placeholder {candidate}"):
        Templates(base_prompt="{task}{candidate}").validate(["question", "answer"])
    with pytest.raises(ConfigError, match="only the first field may have an empty marker"):
        Templates(field_markers={"question": "Q:", "answer": ""}).validate(["question", "answer"])
    with pytest.raises(ConfigError, match="does not use the field {answer}"):
        Templates(example="Q: {question}").validate(["question", "answer"])
    with pytest.raises(ConfigError, match="must not be empty"):
        Templates(end_marker="").validate(["question", "answer"])
