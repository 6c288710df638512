import inspect
import json

import pytest
from click.testing import CliRunner

from bare_engine.errors import ConfigError
from bare_engine.eval.cli import export_command
from bare_engine.eval.export import export_records

# click < 8.2 mixes stderr into stdout unless told not to.
_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}


def _stage(q, a):
    return {"model": "m", "text": f"Question: {q}\nAnswer: {a}", "fields": {"question": q, "answer": a}}


RECORDS = [  # the pipeline's layout: final `fields` plus stage objects
    {"id": 0, "mode": "bare", "fields": {"question": "Q0 é", "answer": "A0"}, "base": _stage("b0", "x"),
     "refine": _stage("Q0 é", "A0")},
    {"id": 1, "mode": "base", "base": _stage("b1", "y")},  # no final fields: the last parsed stage
    {"id": 2, "mode": "bare", "fields": None, "base": {"text": "junk", "fields": None}},  # nothing usable
]
EXPECTED = [("Q0 é", "A0"), ("b1", "y")]


@pytest.fixture
def gen(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_sft_round_trip(gen, tmp_path):
    result = export_records(gen, "sft", tmp_path / "out" / "sft.jsonl", system="Solve it.")
    assert (result.written, result.skipped) == (2, 1)
    lines = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(m["messages"][1]["content"], m["messages"][2]["content"]) for m in lines] == EXPECTED
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert lines[0]["messages"][0]["content"] == "Solve it."


def test_sft_custom_fields_and_bad_field(gen, tmp_path):
    out = tmp_path / "sft.jsonl"
    export_records(gen, "sft", out, field="base", user_field="answer", assistant_field="question")
    first = json.loads(out.read_text().splitlines()[0])["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"] and [m["content"] for m in first] == ["x", "b0"]
    with pytest.raises(ConfigError, match="no record has both 'prompt' and 'answer'"):
        export_records(gen, "sft", out, user_field="prompt")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_records(gen, "csv", out)


def test_parquet_round_trip(gen, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (bare-engine[export])")
    result = export_records(gen, "parquet", tmp_path / "d.parquet")
    assert result.written == 2
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.column_names == ["question", "answer"]
    assert list(zip(table["question"].to_pylist(), table["answer"].to_pylist())) == EXPECTED


def test_hf_round_trip(gen, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets not installed (bare-engine[export])")
    export_records(gen, "hf", tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert [(r["question"], r["answer"]) for r in ds] == EXPECTED
    with pytest.raises(ConfigError, match="exists"):
        export_records(gen, "hf", tmp_path / "ds")


def test_export_cli(gen, tmp_path):
    runner = CliRunner(**_RUNNER_KW)
    out = tmp_path / "sft.jsonl"
    ok = runner.invoke(export_command, [str(gen), "--format", "sft", "--out", str(out)])
    assert ok.exit_code == 0 and "wrote 2 examples" in ok.stdout and "1 records skipped" in ok.stdout
    assert len(out.read_text().splitlines()) == 2
    bad = runner.invoke(export_command, [str(gen), "--format", "sft", "--out", str(out), "--field", "nope"])
    assert bad.exit_code == 1 and bad.stderr.strip().count("\n") == 0 and "no record has field 'nope'" in bad.stderr
