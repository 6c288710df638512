"""Load and check the seed examples and the refine mode's candidate file (JSONL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bare_engine.errors import ConfigError
from bare_engine.utils.jsonl import read_jsonl_rows


@dataclass(frozen=True)
class Example:
    id: str | int
    fields: dict[str, str]


def load_seeds(path: str | Path, fields: list[str], id_field: str, k: int) -> list[Example]:
    """The seed examples; the seed's id is its `id_field` value, else its position."""
    rows = read_jsonl_rows(path, "seeds")
    seeds = []
    for n, (line_no, row) in enumerate(rows):
        seed_id = row.get(id_field, n)
        if not isinstance(seed_id, (str, int)) or isinstance(seed_id, bool):
            raise ConfigError(f"seeds file {path} line {line_no}: id field '{id_field}' must be a string or integer")
        seeds.append(Example(seed_id, _fields(row, fields, path, line_no, "seeds")))
    if len(seeds) < k:
        raise ConfigError(f"seeds file {path} has {len(seeds)} examples, fewer than k={k}")
    return seeds


def load_candidates(path: str | Path, fields: list[str]) -> list[Example]:
    """Candidates to refine: plain records with the fields, or output records of an earlier run
    (their final `fields` are used). The id is the candidate's position in the file."""
    rows = read_jsonl_rows(path, "candidates")
    out = []
    for n, (line_no, row) in enumerate(rows):
        source = row["fields"] if isinstance(row.get("fields"), dict) else row
        out.append(Example(n, _fields(source, fields, path, line_no, "candidates")))
    return out


def load_grounding(path: str | Path, fields: list[str]) -> list[dict[str, str]]:
    """The grounding rows (e.g. RAFT contexts): candidate i is grounded in row i % len(rows)."""
    rows = [_fields(row, fields, path, line_no, "grounding") for line_no, row in read_jsonl_rows(path, "grounding")]
    if not rows:
        raise ConfigError(f"grounding file {path} has no rows")
    return rows


def _fields(row: dict, fields: list[str], path, line_no: int, what: str) -> dict[str, str]:
    out = {}
    for name in fields:
        if name not in row:
            raise ConfigError(f"{what} file {path} line {line_no}: missing field '{name}'")
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{what} file {path} line {line_no}: field '{name}' must be text")
        out[name] = str(value)
    return out
