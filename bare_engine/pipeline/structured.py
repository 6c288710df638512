"""Structured stages (``structured = true`` in [sampling.refine] / [sampling.instruct]): the model writes
the record's fields as one JSON object, constrained to a schema built from ``fields``, so no record is
dropped for a field it failed to mark."""

from __future__ import annotations

import json

from bare_engine.structured.params import StructuredOutputsParams

STRUCTURED_STAGES = ("refine", "instruct")


def record_schema(fields: list[str]) -> dict:
    """Every field a non-empty string, all required, nothing else."""
    return {"type": "object", "properties": {name: {"type": "string", "minLength": 1} for name in fields},
            "required": list(fields), "additionalProperties": False}


def structured_outputs(fields: list[str]) -> StructuredOutputsParams:
    """Compact JSON: free whitespace between tokens is where a small model loops until max_tokens."""
    return StructuredOutputsParams(json=record_schema(fields), disable_any_whitespace=True)


def json_instruction(fields: list[str]) -> str:
    """Appended to the stage's user message: the reply's shape, in words the model can follow."""
    keys = ", ".join(f'"{name}"' for name in fields)
    return f"\n\nReply with one JSON object whose keys are {keys}, each a string."


def parse_json_fields(text: str, fields: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """(fields, None), or (None, reason) as templates.parse_with_reason gives it."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, "json"  # only a truncated reply (max_tokens) is not valid JSON
    if not isinstance(value, dict):
        return None, "json"
    parsed = {}
    for name in fields:
        if not isinstance(value.get(name), str):
            return None, f"missing:{name}"
        if not value[name].strip():
            return None, f"empty:{name}"
        parsed[name] = value[name].strip()
    return parsed, None
