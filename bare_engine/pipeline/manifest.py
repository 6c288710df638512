"""The run manifest (`<out>.manifest.json`): config, versions, model fingerprints, and the resume check."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
from importlib import metadata
from pathlib import Path

from bare_engine.errors import ConfigError, ResumeMismatchError
from bare_engine.pipeline.config import PipelineConfig, resume_key
from bare_engine.pipeline.records import manifest_path

MANIFEST_FORMAT = 1
FULL_HASH_LIMIT = 256 * 2**20  # below this many bytes of weights, hash them fully
PACKAGES = ("bare-engine", "torch", "transformers", "tokenizers", "safetensors", "triton", "numpy")
SMALL_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")


def model_fingerprint(model_dir: str | Path) -> dict:
    """sha256 over the model folder's safetensors (fully when small, else name+size+header) and its
    config/tokenizer files, which change outputs too."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    weights = [p for p in files if p.suffix == ".safetensors"]
    weight_bytes = sum(p.stat().st_size for p in weights)
    method = "full" if weight_bytes <= FULL_HASH_LIMIT else "safetensors-header"
    digest = hashlib.sha256()
    for p in files:
        if p.suffix == ".safetensors":
            digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            digest.update(_file_digest(p) if method == "full" else _safetensors_header(p))
        elif p.suffix in SMALL_FILE_SUFFIXES:
            digest.update(f"{p.name}\0".encode() + _file_digest(p))
    return {"sha256": digest.hexdigest(), "method": method, "weight_files": len(weights), "weight_bytes": weight_bytes}


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return f.read(min(size, 100 * 2**20))


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.digest()


def file_sha256(path: str | Path) -> str:
    return _file_digest(Path(path)).hex()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(cfg: PipelineConfig, extra_models: dict[str, Path] | None = None) -> dict:
    """Everything that identifies the run; `resume` holds what a resumed run must match.
    `extra_models`: more model folders the run depends on (a LoRA teacher's base)."""
    paths = {name: Path(cfg.model_path(name)) for name in cfg.model_names}
    paths.update(extra_models or {})
    models = {name: {"path": str(p.resolve()), "fingerprint": model_fingerprint(p)} for name, p in paths.items()}
    inputs = {"seeds": {"path": str(Path(cfg.seeds).resolve()), "sha256": file_sha256(cfg.seeds)}}
    if cfg.mode == "refine":
        inputs["candidates"] = {"path": str(Path(cfg.candidates).resolve()), "sha256": file_sha256(cfg.candidates)}
    if cfg.mode == "annotate":
        inputs["input"] = {"path": str(Path(cfg.input).resolve()), "sha256": file_sha256(cfg.input)}
    resume = {
        "config": resume_key(cfg),
        "models": {name: m["fingerprint"]["sha256"] for name, m in models.items()},
        "inputs": {name: i["sha256"] for name, i in inputs.items()},
    }
    return {
        "format": MANIFEST_FORMAT, "config": cfg.to_dict(), "models": models, "inputs": inputs,
        "versions": package_versions(), "resume": resume, "runs": [],
    }


def read_manifest(out: str | Path) -> dict | None:
    path = manifest_path(out)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(out: str | Path, manifest: dict) -> None:
    """Atomic replace, so a kill never leaves a half-written manifest. A read-only manifest, or a
    write that fails (full disk, permissions), is a ConfigError, with no temporary file left behind."""
    path = manifest_path(out)
    if path.is_file() and not path.stat().st_mode & 0o222:  # the mode bits, also for root
        raise ConfigError(f"cannot write manifest {path}: it is read-only")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write manifest {path}: {e.strerror or e}") from None


def check_resume(out: str | Path, old: dict | None, new: dict) -> None:
    """ResumeMismatchError when `out` holds records of a run whose config, models or inputs differ."""
    if old is None or "resume" not in old:
        raise ResumeMismatchError(
            f"{out} already has records but no readable manifest {manifest_path(out).name}; "
            "use another --out or delete it"
        )
    diffs = _differences(old["resume"], new["resume"])
    if diffs:
        shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
        raise ResumeMismatchError(
            f"{out} was written with a different config ({shown}); "
            "rerun with the same config to resume, or use another --out"
        )


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in sorted(set(old.get("config", {})) | set(new["config"])):
        a, b = old.get("config", {}).get(key), new["config"].get(key)
        if a != b:
            diffs.append(f"{key}: {_short(a)} -> {_short(b)}")
    for section, what in (("models", "model {} weights changed"), ("inputs", "{} file changed")):
        for name in sorted(set(old.get(section, {})) | set(new[section])):
            if old.get(section, {}).get(name) != new[section].get(name):
                diffs.append(what.format(name))
    return diffs


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
