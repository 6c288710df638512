"""The pipeline on the real engine with tiny random models (CPU): every mode, determinism, kill -9.

Random models write garbage, so these runs use a permissive one-field template whose field
starts at the beginning of the output (any non-empty output parses).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline_fake_engine import read_records, write_jsonl

from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline
from bare_engine.testing import make_model_dir

pytestmark = pytest.mark.cli

MAX_TOKENS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pair")
    make_model_dir(root / "base", "llama", seed=1)
    make_model_dir(root / "instruct", "llama", seed=2)
    write_jsonl(root / "seeds.jsonl", [{"id": f"s{i}", "text": f"Tom has {i} apples."} for i in range(4)])
    write_jsonl(root / "cands.jsonl", [{"text": f"Sara has {i} pens."} for i in range(3)])
    return root


def tiny_config(tiny: Path, out: Path, **overrides):
    values = {
        "base": str(tiny / "base"), "instruct": str(tiny / "instruct"), "seeds": str(tiny / "seeds.jsonl"),
        "out": str(out), "num": 3, "fields": ["text"], "task": "Short sentences.", "progress": False,
        "drop_truncated": False, "templates.example": "{text}", "templates.field_markers": {"text": ""},
        "sampling.base.max_tokens": MAX_TOKENS, "sampling.refine.max_tokens": MAX_TOKENS,
        "sampling.instruct.max_tokens": MAX_TOKENS, "engine.device": "cpu", "engine.max_num_seqs": 4,
    }
    values.update(overrides)
    return load_config(None, values)


@pytest.mark.parametrize("mode", ["bare", "base", "instruct", "refine"])
def test_every_mode_end_to_end(tiny, tmp_path, mode):
    cfg = tiny_config(tiny, tmp_path / "out.jsonl", mode=mode, candidates=str(tiny / "cands.jsonl"))
    result = run_pipeline(cfg, log=lambda _: None)
    records = read_records(cfg.out)
    assert result.complete and len(records) == 3
    assert [r["id"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["mode"] == mode and r["seed_ids"] == ["s0", "s1", "s2"]
        for stage in cfg.stages:
            s = r[stage]
            assert 1 <= s["output_tokens"] <= MAX_TOKENS and s["finish_reason"] in ("stop", "length")
            assert s["fields"] == {"text": s["text"].split("</example>")[0].strip()}
        assert r["fields"] == r[cfg.stages[-1]]["fields"]
    assert sum(m["generated_tokens"] for m in result.models.values()) >= 3
    for model in cfg.model_names:
        assert result.models[model]["generated_tokens"] > 0


def test_same_file_whatever_max_num_seqs_and_kv_budget(tiny, tmp_path):
    files = []
    for n, (max_num_seqs, blocks) in enumerate([(1, None), (4, 64)]):
        cfg = tiny_config(tiny, tmp_path / f"out{n}.jsonl", num=4, seed=3,
                          **{"engine.max_num_seqs": max_num_seqs, "engine.num_kv_blocks": blocks})
        run_pipeline(cfg, log=lambda _: None)
        files.append(Path(cfg.out).read_bytes())
    assert files[0] == files[1] and files[0].count(b"\n") == 4


def test_kill_9_during_a_cli_run_then_resume(tiny, tmp_path):
    NUM = 12  # enough left after each interruption that the run cannot finish before the signal lands
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "bare_engine.pipeline.cli", "--base", str(tiny / "base"), "--instruct",
            str(tiny / "instruct"), "--seeds", str(tiny / "seeds.jsonl"), "--out", str(out), "--num", str(NUM),
            "--fields", "text", "--field-markers", '{"text": ""}', "--example", "{text}", "--no-drop-truncated",
            "--base-max-tokens", str(MAX_TOKENS), "--refine-max-tokens", str(MAX_TOKENS), "--max-num-seqs", "2",
            "--device", "cpu", "--task", "Short sentences.", "--no-progress"]
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    cwd = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = out.read_bytes().count(b"\n")
    assert 2 <= killed_at < NUM

    # Ctrl-C stops cleanly: whole lines only, a hint to resume, exit 130, no traceback.
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and out.read_bytes().count(b"\n") < killed_at + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 130 and "run the same command again to resume" in stderr, stderr
    assert "Traceback" not in stderr and out.read_bytes().endswith(b"\n")

    done = subprocess.run(args + ["--max-num-seqs", "3"], cwd=cwd, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "resuming" in done.stderr.decode()
    records = read_records(out)
    assert [r["id"] for r in records] == list(range(NUM))
    assert len({r["candidate"] for r in records}) == NUM

    reference = tiny_config(tiny, tmp_path / "reference.jsonl", num=NUM, **{"engine.max_num_seqs": 2})
    run_pipeline(reference, log=lambda _: None)
    assert out.read_bytes() == Path(reference.out).read_bytes()


DEMO = Path(__file__).resolve().parents[2] / "bare_engine" / "demo"


@pytest.mark.skipif(not (DEMO / "models" / "instruct" / "config.json").exists(), reason="demo pair not bundled yet")
def test_bundled_default_config_makes_valid_records(tmp_path):
    from click.testing import CliRunner

    from bare_engine.pipeline.cli import run_command

    out = tmp_path / "demo.jsonl"
    result = CliRunner().invoke(run_command, ["--num", "3", "--out", str(out), "--no-progress", "--device", "cpu",
                                              "--base-max-tokens", "200", "--refine-max-tokens", "200"])
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert len(records) == 3
    for r in records:
        assert set(r["fields"]) == {"question", "answer"} and r["base"]["fields"] and r["refine"]["fields"]
        assert r["base"]["finish_reason"] == "stop"
        assert (r["base"]["model"], r["refine"]["model"]) == ("base", "instruct")
