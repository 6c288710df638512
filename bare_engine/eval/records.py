"""Reading pipeline JSONL and choosing which text of a record is evaluated or exported.

A pipeline output record (bare_engine/pipeline/stages.py) holds the final example and one
object per stage:
  {"id": 0, "candidate": 3, "mode": "bare", "fields": {"question": ..., "answer": ...},
   "base": {"text": "...", "fields": {...}, ...}, "refine": {"text": "...", "fields": {...}, ...}}
`record_fields` is the one place that knows this layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from bare_engine.errors import ConfigError
from bare_engine.utils.jsonl import read_jsonl_rows

STAGES = ("refine", "instruct", "base")  # fallbacks when a record has no final `fields`
FIELD_ALIASES = {"refined": "refine"}
_FLAT_SKIP = {"id"}


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file; ConfigError on a missing or empty file or a bad line."""
    return [row for _, row in read_jsonl_rows(path, "records")]


def record_fields(record: dict, field: str | None = None) -> dict[str, str] | None:
    """The selected text of one record as {name: text}; None when the record lacks it.

    field None: the final example (the record's `fields`; else the last parsed stage, refine
    before base; else a chat record's messages or a flat record's string values). Otherwise a
    dotted path into the record ("refine", "base.text", "input.fields.question"); a stage
    object yields its parsed fields. "refined" is accepted for "refine".
    """
    if field is None:
        for key in ("fields", *STAGES):
            fields = _as_fields(record.get(key))
            if fields:
                return fields
        if any(key in record for key in ("fields", *STAGES)):
            return None  # a pipeline record with no parsed example
        if isinstance(record.get("messages"), list):
            return {m.get("role", str(i)): str(m.get("content", "")) for i, m in enumerate(record["messages"])}
        flat = {k: v for k, v in record.items() if isinstance(v, str) and k not in _FLAT_SKIP}
        return _as_fields(flat)
    value = record
    for key in field.split("."):
        if isinstance(value, dict) and key not in value:
            key = FIELD_ALIASES.get(key, key)
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return _as_fields(value, name=field.rsplit(".", 1)[-1])


def _as_fields(value, name: str = "text") -> dict[str, str] | None:
    if isinstance(value, dict) and "fields" in value:
        value = value["fields"]  # a stage object
    if value is None or value == {} or value == "":
        return None
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return {name: value if isinstance(value, str) else json.dumps(value)}


def fields_text(fields: dict[str, str]) -> str:
    """One record as one text (the field values in order, without their names)."""
    return "\n".join(fields.values())


def select_fields(records: list[dict], field: str | None, source: str) -> tuple[list[dict[str, str]], int]:
    """The selected fields of every record that has them, and how many records lacked them.

    ConfigError when no record has the field, which almost always means a misspelt field.
    """
    selected = [record_fields(r, field) for r in records]
    kept = [f for f in selected if f is not None]
    if not kept:
        what = f"field {field!r}" if field else "an example (refined/base fields or string values)"
        keys = ", ".join(sorted(records[0])) or "none"
        raise ConfigError(f"{source}: no record has {what}; top-level keys of the first record: {keys}")
    return kept, len(selected) - len(kept)
