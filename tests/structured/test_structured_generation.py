"""Structured outputs on a tiny random model: every sampled output conforms, whatever the seed, batch,
preemption or step strategy (bare_engine/structured/)."""

import json
import re

import jsonschema
import pytest

from bare_engine import LLM, SamplingParams, StructuredOutputsParams
from bare_engine.errors import InvalidRequestError, InvalidSamplingParamsError
from bare_engine.testing import make_model_dir

ENGINE = dict(block_size=4, max_model_len=512, num_kv_blocks=1024, max_num_seqs=16, max_num_batched_tokens=256)
SEEDS = range(12)

SCHEMAS = {
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"type": "string", "enum": ["S", "M", "L"]}},
             "required": ["color", "size"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer"}, "admin": {"type": "boolean"}},
                 "required": ["id", "admin"], "additionalProperties": False}},
        "required": ["user"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False},
    "pattern": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}, "required": ["code"],
        "additionalProperties": False},
    "numbers": {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number"}, "count": {"type": "integer", "minimum": 10, "maximum": 20}},
        "required": ["age", "score", "count"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir, **ENGINE)


def constrained(seed, temperature=1.0, max_tokens=200, **spec):
    return SamplingParams(temperature=temperature, seed=seed, max_tokens=max_tokens,
                          structured_outputs=StructuredOutputsParams(**spec))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate_at_temperature_one(llm, name):
    schema = SCHEMAS[name]
    params = [constrained(seed, json=schema, disable_any_whitespace=seed % 2 == 0) for seed in SEEDS]
    outputs = llm.generate(["Give me a record:"] * len(params), params, use_tqdm=False)
    for out in outputs:
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", (completion.text, completion.error)
        jsonschema.validate(json.loads(completion.text), schema)


def test_json_object_outputs_are_json_objects(llm):
    params = [constrained(seed, json_object=True, disable_any_whitespace=True, max_tokens=300) for seed in SEEDS]
    for out in llm.generate(["{"] * len(params), params, use_tqdm=False):
        if out.outputs[0].finish_reason == "stop":  # a free-form object can outgrow max_tokens
            assert isinstance(json.loads(out.outputs[0].text), dict)
        else:
            assert out.outputs[0].finish_reason == "length"


def test_regex_and_choice_outputs_match(llm):
    regex = r"[0-9]{3}-[a-z]{2,4}"
    choices = ["yes", "no", "maybe not"]
    params = [constrained(seed, regex=regex) for seed in SEEDS] + [constrained(seed, choice=choices) for seed in SEEDS]
    params.append(constrained(0, temperature=0.0, regex=regex))  # a greedy row is masked too
    texts = [o.outputs[0].text for o in llm.generate(["x"] * len(params), params, use_tqdm=False)]
    assert all(re.fullmatch(regex, t) for t in texts[: len(SEEDS)]), texts
    assert all(t in choices for t in texts[len(SEEDS): -1]), texts
    assert re.fullmatch(regex, texts[-1])
    assert len(set(texts[len(SEEDS): -1])) > 1  # sampled, not stuck on one choice


def test_grammar_outputs_match(llm):
    grammar = 'root ::= "(" item ("," item)* ")"\nitem ::= [a-c] | "x" [0-9]'
    params = [constrained(seed, grammar=grammar) for seed in SEEDS]
    for out in llm.generate(["x"] * len(params), params, use_tqdm=False):
        assert out.outputs[0].finish_reason in ("stop", "length")
        if out.outputs[0].finish_reason == "stop":
            assert re.fullmatch(r"\((?:[a-c]|x[0-9])(?:,(?:[a-c]|x[0-9]))*\)", out.outputs[0].text)


def mixed_batch(schema):
    """Constrained rows among unconstrained, greedy, penalised and logprob rows."""
    return [constrained(seed, json=schema) for seed in range(4)] + [
        SamplingParams(temperature=0.9, seed=50, max_tokens=40, presence_penalty=0.5),
        SamplingParams(temperature=0.0, max_tokens=30, logprobs=2),
        SamplingParams(temperature=1.2, seed=51, max_tokens=25, top_k=20),
    ]


def texts(outputs):
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]


def test_seeded_constrained_requests_are_batch_and_step_invariant(model_dir):
    schema = SCHEMAS["numbers"]
    prompts = ["a record", "another record", "x", "y", "free text", "greedy", "top k"]
    alone = [texts(LLM(model_dir, **ENGINE).generate([prompts[i]], [constrained(i, json=schema)], use_tqdm=False))[0]
             for i in range(4)]
    runs = []
    for overlapped in (False, True):
        llm = LLM(model_dir, async_scheduling=overlapped, **ENGINE)
        runs.append(texts(llm.generate(prompts, mixed_batch(schema), use_tqdm=False)))
    assert runs[0] == runs[1]
    assert runs[0][:4] == alone


def test_grammar_state_survives_preemption(model_dir):
    schema = SCHEMAS["nested"]
    prompts = [[5 + i] * (6 + 3 * i) for i in range(6)]
    params = [constrained(seed, json=schema) for seed in range(6)]
    roomy = LLM(model_dir, **ENGINE)
    tight = LLM(model_dir, **{**ENGINE, "num_kv_blocks": 40, "max_model_len": 128, "max_num_seqs": 6})
    expected = texts(roomy.generate(prompts, params, use_tqdm=False))
    got = texts(tight.generate(prompts, params, use_tqdm=False))
    assert tight.engine.scheduler.num_preemptions > 0
    assert got == expected
    for _, text, reason in got:
        assert reason == "stop"
        jsonschema.validate(json.loads(text), schema)


def test_uncompilable_spec_is_an_invalid_request(llm):
    with pytest.raises(InvalidRequestError, match="regex cannot be compiled"):
        llm.generate(["x"], constrained(0, regex="(unclosed"), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="json cannot be compiled"):
        llm.generate(["x"], constrained(0, json={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
                     use_tqdm=False)
    assert llm.generate(["x"], constrained(0, choice=["ok"]), use_tqdm=False)[0].outputs[0].text == "ok"


@pytest.mark.parametrize("spec", [{}, {"regex": "a", "choice": ["a"]}, {"choice": []}, {"json": "{not json"},
                                  {"json": 3}])
def test_bad_structured_outputs_params(spec):
    with pytest.raises(InvalidSamplingParamsError, match="structured_outputs"):
        SamplingParams(structured_outputs=StructuredOutputsParams(**spec) if spec else {})


def test_compiled_grammars_are_cached(llm):
    llm.generate(["x"], constrained(0, choice=["cached", "twice"]), use_tqdm=False)
    compiler = llm.engine.intake._grammar_compilers[next(iter(llm.engine.intake._grammar_compilers))]
    size = len(compiler._cache)
    llm.generate(["y"], constrained(1, choice=["cached", "twice"]), use_tqdm=False)
    assert len(compiler._cache) == size
