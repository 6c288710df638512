"""Native CPU kernels: a C source beside this file, compiled on first use and cached.

Each source (with the ``*.h`` headers beside it) is built with the machine's C compiler
(``cc``, or ``$CC``) for this CPU (``-march=native``) into ``cache_root()/kernels`` (``$BARE_ENGINE_CACHE``, default ``~/.cache/bare-engine``),
keyed by the source, the flags, the compiler and the CPU, and loaded with ctypes. OpenMP comes
from the runtime torch already loaded (same soname), so the kernels share torch's threads.
``load`` returns the library, or the reason it could not be built as a string.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

# The dtype codes of cpu_dtype.h, as the kernels take them.
DTYPES = {torch.float32: 0, torch.bfloat16: 1}

COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
# Linked without -ffast-math: that would add crtfastmath.o, which flushes denormals process-wide.
LINK_FLAGS = ["-shared", "-fopenmp", "-lm"]
BUILD_TIMEOUT_S = 120


def cache_root() -> Path:
    """bare-engine's cache: built kernels here, converted checkpoints (model/gguf_import.py) beside them."""
    return Path(os.environ.get("BARE_ENGINE_CACHE") or Path.home() / ".cache" / "bare-engine")


def _cpu_identity() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def compiler() -> str | None:
    """The C compiler the kernels build with: $CC, else cc or gcc on PATH; None when there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(source: Path) -> Path:
    """The shared library of ``source``, compiled unless the cache holds it; OSError when it cannot be."""
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler (cc, gcc or $CC) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]  # what the source may include
    key = hashlib.sha256("\0".join([source.read_text(), *headers, " ".join(COMPILE_FLAGS + LINK_FLAGS), version,
                                    _cpu_identity()]).encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / f"{source.stem}.o", Path(tmp) / f"{source.stem}.so"
        for cmd in ([cc, *COMPILE_FLAGS, "-c", str(source), "-o", str(obj)],
                    [cc, str(obj), *LINK_FLAGS, "-o", str(lib)]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if proc.returncode != 0:
                raise OSError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-1000:]}")
        os.replace(lib, target)  # atomic: concurrent builders each install a whole file
    return target


@functools.cache
def load(name: str) -> ctypes.CDLL | str:
    """``<name>.c`` beside this file, built and loaded; or why not, as a string."""
    try:
        return ctypes.CDLL(str(build(Path(__file__).with_name(f"{name}.c"))))
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)


def heads_packed(x: torch.Tensor) -> bool:
    """``[N, H, D]`` with each row's heads packed: row n at ``n * x.stride(0)``, as a head slice of the fused qkv."""
    return x.dim() == 3 and x.stride(2) == 1 and x.stride(1) == x.shape[2]
