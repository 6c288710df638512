"""Reading JSONL input files (seeds, candidates, records) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from bare_engine.errors import ConfigError


def read_jsonl_rows(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; ConfigError on a missing, empty or bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} file {path}: {e}") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{what} file {path} line {line_no}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{what} file {path} line {line_no}: expected a JSON object")
        rows.append((line_no, row))
    if not rows:
        raise ConfigError(f"{what} file {path} is empty (no records)")
    return rows
