"""Structured refine/instruct stages (pipeline/structured.py): the request carries the record's JSON
schema, the reply's JSON becomes the fields, and a non-JSON reply is a drop with a reason."""

import json
from types import SimpleNamespace

import jsonschema
import pytest

from bare_engine.errors import ConfigError
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.seeds import Example
from bare_engine.pipeline.stages import Candidate, StagePlanner
from bare_engine.pipeline.structured import parse_json_fields, record_schema
from bare_engine.testing import make_tokenizer

FIELDS = ["question", "answer"]


def planner(tmp_path, structured: bool, mode="instruct"):
    cfg = load_config(None, {"mode": mode, "num": 2, "progress": False, "out": str(tmp_path / "o.jsonl"),
                             "sampling.instruct.structured": structured, "sampling.refine.structured": structured})
    seeds = [Example(f"s{i}", {"question": f"Q{i}?", "answer": f"#### {i}"}) for i in range(cfg.k)]
    tokenizer = make_tokenizer()
    return cfg, StagePlanner(cfg, seeds, lambda _model: tokenizer)


def finish(plan, cand, stage, text, reason="stop"):
    completion = SimpleNamespace(text=text, finish_reason=reason, token_ids=[1, 2])
    plan.finish(cand, stage, SimpleNamespace(outputs=[completion], prompt_token_ids=[1]))


@pytest.mark.parametrize("mode, stage", [("instruct", "instruct"), ("bare", "refine")])
def test_structured_stage_requests_the_record_schema(tmp_path, mode, stage):
    cfg, plan = planner(tmp_path, True, mode)
    cand = plan.candidate(0)
    cand.fields = {"question": "Q?", "answer": "#### 1"}
    _, prompt, params, _ = plan.request(cand, stage)
    assert params.structured_outputs.json == record_schema(cfg.fields)
    assert '"question", "answer"' in make_tokenizer().decode(prompt)
    finish(plan, cand, stage, json.dumps({"question": " How many? ", "answer": "#### 3"}))
    assert cand.fields == {"question": "How many?", "answer": "#### 3"} and cand.drop_reason is None


def test_plain_stage_has_no_schema(tmp_path):
    _, plan = planner(tmp_path, False)
    _, _, params, _ = plan.request(plan.candidate(0), "instruct")
    assert params.structured_outputs is None


def test_truncated_json_is_a_drop_with_its_reason(tmp_path):
    _, plan = planner(tmp_path, True)
    cand = plan.candidate(0)
    finish(plan, cand, "instruct", '{"question": "How ma', reason="length")
    assert cand.fields is None and cand.drop_reason in ("instruct:json", "instruct:length")


def test_parse_json_fields():
    assert parse_json_fields('{"question": "a", "answer": "b"}', FIELDS) == ({"question": "a", "answer": "b"}, None)
    assert parse_json_fields('{"question": "a"}', FIELDS) == (None, "missing:answer")
    assert parse_json_fields('{"question": " ", "answer": "b"}', FIELDS) == (None, "empty:question")
    assert parse_json_fields('["a"]', FIELDS) == (None, "json")
    assert parse_json_fields('{"question": "a", "ans', FIELDS) == (None, "json")


def test_record_schema_accepts_records_and_refuses_others():
    schema = record_schema(FIELDS)
    jsonschema.validate({"question": "a", "answer": "b"}, schema)
    for bad in ({"question": "a"}, {"question": "a", "answer": ""}, {"question": "a", "answer": "b", "x": "c"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_only_refine_and_instruct_can_be_structured(tmp_path):
    with pytest.raises(ConfigError, match="sampling.base.structured"):
        load_config(None, {"out": str(tmp_path / "o.jsonl"), "sampling.base.structured": True})
