"""Compiling StructuredOutputsParams (structured/compiler.py): cache, errors, the missing extra."""

import sys

import pytest

from bare_engine import StructuredOutputsParams
from bare_engine.errors import ConfigError, InvalidRequestError
from bare_engine.structured.compiler import GrammarCompiler, import_xgrammar
from bare_engine.testing import make_tokenizer


@pytest.fixture(scope="module")
def compiler():
    tokenizer = make_tokenizer()
    return GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id}, cache_size=2)


def test_same_spec_compiles_once_and_the_cache_is_bounded(compiler):
    first = compiler.compile(StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}}))
    # A dict is keyed canonically (key order does not matter)
    assert compiler.compile(StructuredOutputsParams(
        json={"properties": {"a": {"type": "integer"}}, "type": "object"})) is first
    compiler.compile(StructuredOutputsParams(regex="[a-z]+"))
    compiler.compile(StructuredOutputsParams(choice=["x", "y"]))
    assert len(compiler._cache) == 2


@pytest.mark.parametrize("spec, message", [
    ({"regex": "(a"}, "regex cannot be compiled"),
    ({"grammar": "root ::= undefined_rule"}, "grammar cannot be compiled"),
    ({"json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}, "json cannot be compiled"),
])
def test_uncompilable_specs_name_the_problem(compiler, spec, message):
    with pytest.raises(InvalidRequestError, match=message):
        compiler.compile(StructuredOutputsParams(**spec))


def test_missing_xgrammar_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar -> ImportError
    with pytest.raises(ConfigError, match=r"bare-engine\[structured\]"):
        import_xgrammar()
