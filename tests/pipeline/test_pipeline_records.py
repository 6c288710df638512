"""Output file: durable whole-line appends, torn-line recovery, manifest and fingerprints."""

from __future__ import annotations

import json

import pytest

from bare_engine.errors import ConfigError, ResumeMismatchError
from bare_engine.pipeline.manifest import (
    check_resume,
    model_fingerprint,
    read_manifest,
    write_manifest,
)
from bare_engine.pipeline.records import (
    RecordWriter,
    check_writable,
    manifest_path,
    read_output,
)
from bare_engine.testing import make_model_dir


def test_writer_appends_whole_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordWriter(path) as w:
        w.write({"id": 0, "candidate": 2, "text": "ünïcode\nline"})
    with RecordWriter(path) as w:
        w.write({"id": 1, "candidate": 5})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert json.loads(lines[0])["text"] == "ünïcode\nline"
    state = read_output(path)
    assert (state.count, state.last_candidate, state.torn_bytes) == (2, 5, 0)


def test_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": 0, "candidate": 0}\n{"id": 1, "candidate": 3}\n{"id": 2, "cand')
    state = read_output(path)
    assert (state.count, state.last_candidate, state.torn_bytes) == (2, 3, len(b"{\"id\": 2, \"cand"))
    assert path.read_bytes().endswith(b'"candidate": 3}\n')


def test_a_foreign_or_corrupt_line_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 0, "candidate": 1}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not a record"):
        read_output(path)
    path.write_text('{"id": 0, "candidate": 4}\n{"id": 1, "candidate": 4}\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_output(path)


def test_missing_output_is_empty(tmp_path):
    assert read_output(tmp_path / "none.jsonl").count == 0


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "dir" / "out.jsonl")  # folders are created
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write output file"):
        check_writable(blocker / "out.jsonl")
    with pytest.raises(ConfigError, match="is a directory"):
        check_writable(tmp_path)


def test_manifest_round_trip_and_resume_check(tmp_path):
    out = tmp_path / "out.jsonl"
    manifest = {"resume": {"config": {"k": 3, "seed": 0}, "models": {"base": "aa"}, "inputs": {"seeds": "bb"}}, "runs": []}
    write_manifest(out, manifest)
    assert manifest_path(out).name == "out.jsonl.manifest.json"
    old = read_manifest(out)
    assert old == manifest
    check_resume(out, old, manifest)
    changed = {"resume": {"config": {"k": 2, "seed": 0}, "models": {"base": "cc"}, "inputs": {"seeds": "bb"}}}
    with pytest.raises(ResumeMismatchError, match=r"k: 3 -> 2; model base weights changed"):
        check_resume(out, old, changed)


def test_model_fingerprint_tracks_weights_and_tokenizer(tmp_path):
    a = make_model_dir(tmp_path / "a", seed=0)
    b = make_model_dir(tmp_path / "b", seed=0)
    c = make_model_dir(tmp_path / "c", seed=1)
    fa, fb, fc = model_fingerprint(a), model_fingerprint(b), model_fingerprint(c)
    assert fa == fb and fa["method"] == "full" and fa["weight_files"] == 1
    assert fa["sha256"] != fc["sha256"]
    (b / "tokenizer_config.json").write_text((b / "tokenizer_config.json").read_text().replace("</s>", "<|end|>"))
    assert model_fingerprint(b)["sha256"] != fa["sha256"]


def test_header_fingerprint_for_big_weights(tmp_path, monkeypatch):
    from bare_engine.pipeline import manifest

    a = make_model_dir(tmp_path / "a", seed=0)
    c = make_model_dir(tmp_path / "c", seed=1)
    monkeypatch.setattr(manifest, "FULL_HASH_LIMIT", 0)
    fa, fc = model_fingerprint(a), model_fingerprint(c)
    assert fa["method"] == "safetensors-header"
    assert fa["sha256"] == fc["sha256"]  # same shapes: headers agree (the cheap check's known limit)


def test_two_writers_cannot_share_an_output(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordWriter(path):
        with pytest.raises(ConfigError, match="another run is writing"):
            RecordWriter(path)
    with RecordWriter(path) as w:  # released on close
        w.write({"candidate": 0})
