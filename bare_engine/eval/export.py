"""Export generated records for student training: chat SFT JSONL, Parquet, or a HF datasets dir."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bare_engine.errors import ConfigError
from bare_engine.eval.records import read_jsonl, select_fields

FORMATS = ("sft", "parquet", "hf")


@dataclass
class ExportResult:
    written: int
    skipped: int  # records without the selected example or without the user/assistant fields
    out: Path


def sft_messages(fields: dict[str, str], user_field: str, assistant_field: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": fields[user_field]},
                 {"role": "assistant", "content": fields[assistant_field]}]
    return {"messages": messages}


def export_records(path: str | Path, fmt: str, out: str | Path, field: str | None = None,
                   user_field: str = "question", assistant_field: str = "answer",
                   system: str | None = None) -> ExportResult:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    examples, skipped = select_fields(read_jsonl(path), field, str(path))
    if fmt == "sft":
        usable = [f for f in examples if f.get(user_field) and f.get(assistant_field)]
        if not usable:
            names = ", ".join(examples[0])
            raise ConfigError(f"{path}: no record has both {user_field!r} and {assistant_field!r} (fields: {names})")
        _write_sft(usable, out, user_field, assistant_field, system)
        return ExportResult(len(usable), skipped + len(examples) - len(usable), out)
    rows = _table_rows(examples)
    if fmt == "parquet":
        _write_parquet(rows, out)
    else:
        _write_hf(rows, out)
    return ExportResult(len(rows), skipped, out)


def _write_sft(examples, out: Path, user_field: str, assistant_field: str, system: str | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for fields in examples:
            fh.write(json.dumps(sft_messages(fields, user_field, assistant_field, system), ensure_ascii=False) + "\n")


def _table_rows(examples: list[dict[str, str]]) -> list[dict[str, str | None]]:
    """Rows with the same columns (all fields seen, in first-seen order; None where missing)."""
    columns = list(dict.fromkeys(name for fields in examples for name in fields))
    return [{name: fields.get(name) for name in columns} for fields in examples]


def _write_parquet(rows, out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--format parquet needs pyarrow: pip install 'bare-engine[export]'") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)


def _write_hf(rows, out: Path) -> None:
    try:
        import datasets
    except ImportError:
        raise ConfigError("--format hf needs datasets: pip install 'bare-engine[export]'") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists; the hf format writes a new directory")
    datasets.Dataset.from_list(rows).save_to_disk(str(out))
