"""Issue 30's resume and write cases: a resume verifies every kept line before it touches the file
(refused: one error, the file byte for byte as it was); write errors are one ConfigError with the
file's whole lines kept and no temporary file; a run that fails before its first record leaves no
empty output or manifest."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_fake_engine import fake_factory, fake_setup, read_records

from bare_engine.errors import ConfigError
from bare_engine.pipeline import records as records_module
from bare_engine.pipeline.manifest import write_manifest
from bare_engine.pipeline.records import RecordWriter, manifest_path
from bare_engine.pipeline.run import run_pipeline

QUIET = dict(log=lambda _: None)


@pytest.fixture
def finished(tmp_path):
    """A finished bare run of 6 records, and the bytes of a full 10-record run of the same config."""
    full = fake_setup(tmp_path / "full", num=10, seed=3)
    run_pipeline(full, fake_factory(), **QUIET)
    cfg = fake_setup(tmp_path / "part", num=6, seed=3)
    run_pipeline(cfg, fake_factory(), **QUIET)
    return cfg, Path(full.out).read_bytes().replace(str(tmp_path / "full").encode(), b"")


def forge(path: Path, edit, torn: bytes = b'{"id": 6, "cand') -> bytes:
    """Apply ``edit`` to the records of ``path`` (list of dicts, in place), add a torn tail; the new bytes."""
    rows = read_records(path)
    edit(rows)
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows) + torn
    path.write_bytes(data)
    return data


FORGERIES = {
    "missing field": (lambda rows: rows[2].pop("seed_ids"), "missing seed_ids"),
    "candidate jump": (lambda rows: rows[-1].update(candidate=rows[-1]["candidate"] + 5), "seed"),
    "duplicate candidate": (lambda rows: rows[3].update(candidate=rows[2]["candidate"]), "does not follow"),
    "swapped lines": (lambda rows: rows.insert(1, rows.pop(2)), "id 2 at position 1"),
    "foreign seed": (lambda rows: rows[0]["base"].update(seed=rows[0]["base"]["seed"] + 1), "seed"),
    "wrong ordinal": (lambda rows: rows[4].update(id=9), "id 9 at position 4"),
    "other mode": (lambda rows: rows[1].update(mode="instruct"), "mode"),
    "not an object": (lambda rows: rows.__setitem__(2, [1, 2]), "not a JSON object"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_line_is_refused_and_the_file_left_byte_for_byte(finished, name):
    cfg, _ = finished
    edit, why = FORGERIES[name]
    before = forge(Path(cfg.out), edit)
    manifest_before = manifest_path(cfg.out).read_bytes()
    more = fake_setup(Path(cfg.out).parent, num=10, seed=3)
    with pytest.raises(ConfigError, match=why) as info:
        run_pipeline(more, fake_factory(), **QUIET)
    assert "is not a record of this pipeline" in str(info.value) and "\n" not in str(info.value)
    assert Path(cfg.out).read_bytes() == before  # the torn tail included: nothing was cut
    assert manifest_path(cfg.out).read_bytes() == manifest_before


def test_an_honest_torn_resume_still_matches_an_uninterrupted_run(finished):
    cfg, full = finished
    forge(Path(cfg.out), lambda rows: None)
    run_pipeline(fake_setup(Path(cfg.out).parent, num=10, seed=3), fake_factory(), **QUIET)
    assert Path(cfg.out).read_bytes().replace(str(Path(cfg.out).parent).encode(), b"") == full


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EACCES])
def test_a_failing_write_is_one_error_and_keeps_whole_lines(tmp_path, monkeypatch, code):
    path = tmp_path / "out.jsonl"
    real_write = os.write
    with RecordWriter(path) as writer:
        writer.write({"id": 0, "candidate": 0})

        def half_then_fail(fd, data):
            if len(data) > 10:
                return real_write(fd, bytes(data[:10]))  # a partial write, then the error
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(records_module.os, "write", half_then_fail)
        with pytest.raises(ConfigError, match=f"cannot write output file .*{os.strerror(code)}"):
            writer.write({"id": 1, "candidate": 1, "text": "long enough to be cut"})
    assert path.read_bytes() == b'{"id": 0, "candidate": 0}\n'


def test_a_real_file_size_limit_is_one_error(tmp_path):
    """RLIMIT_FSIZE makes write() fail with EFBIG (Python ignores SIGXFSZ)."""
    script = (
        "import resource, sys\n"
        "from bare_engine.errors import ConfigError\n"
        "from bare_engine.pipeline.records import RecordWriter\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
        "with RecordWriter(sys.argv[1]) as w:\n"
        "    try:\n"
        "        for i in range(100): w.write({'id': i, 'candidate': i, 'text': 'x' * 40})\n"
        "    except ConfigError as e: print('error:', e)\n"
    )
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("error: cannot write output file") and "too large" in proc.stdout
    assert out.read_bytes().endswith(b"}\n") and len(out.read_bytes()) <= 200


def test_a_read_only_manifest_is_one_error_with_no_temp_file(finished):
    cfg, _ = finished
    manifest = manifest_path(cfg.out)
    before = manifest.read_bytes()
    manifest.chmod(0o444)
    try:
        with pytest.raises(ConfigError, match="read-only"):
            run_pipeline(fake_setup(Path(cfg.out).parent, num=10, seed=3), fake_factory(), **QUIET)
    finally:
        manifest.chmod(0o644)
    assert manifest.read_bytes() == before
    assert not manifest.with_name(manifest.name + ".tmp").exists()


def test_a_manifest_that_cannot_be_replaced_leaves_no_temp_file(tmp_path):
    manifest_path(tmp_path / "out.jsonl").mkdir()  # os.replace onto a directory fails
    with pytest.raises(ConfigError, match="cannot write manifest"):
        write_manifest(tmp_path / "out.jsonl", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl.manifest.json"]


def test_a_failing_manifest_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("bare_engine.pipeline.manifest.json.dump", full_disk)
    with pytest.raises(ConfigError, match="No space left"):
        write_manifest(tmp_path / "out.jsonl", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_leaves_no_empty_output_or_manifest(tmp_path):
    cfg = fake_setup(tmp_path, num=4)

    def broken_engine(cfg):
        raise ConfigError("the engine could not start")

    with pytest.raises(ConfigError, match="could not start"):
        run_pipeline(cfg, broken_engine, **QUIET)
    assert not Path(cfg.out).exists() and not manifest_path(cfg.out).exists()
    # an existing output is kept as it was, even when the resumed run fails
    run_pipeline(cfg, fake_factory(), **QUIET)
    before = Path(cfg.out).read_bytes()
    with pytest.raises(ConfigError):
        run_pipeline(fake_setup(tmp_path, num=8), broken_engine, **QUIET)
    assert Path(cfg.out).read_bytes() == before and manifest_path(cfg.out).exists()
