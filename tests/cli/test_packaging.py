"""kernels/ is importable only as bare_engine.kernels, and the README's entry points work from the repository root.

The top-level kernels/ has no __init__.py: from the root, ``import kernels`` finds the Hugging Face
``kernels`` package that transformers probes for (or, without it, a namespace transformers ignores),
never ours.
"""

import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import bare_engine.kernels.sampling_ref
import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_python_snippet() -> str:
    """The first Python block of the README's 'The engine from Python' section."""
    section = (REPO / "README.md").read_text().split("### The engine from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_in_root(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_kernels_come_from_the_top_level_folder_without_an_init():
    assert Path(bare_engine.kernels.sampling_ref.__file__).parent == REPO / "kernels"
    assert not (REPO / "kernels" / "__init__.py").exists()


def test_kernels_import_nothing_from_bare_engine():
    for path in (REPO / "kernels").glob("*.py"):
        assert not re.search(r"^\s*(from|import) bare_engine", path.read_text(), re.M), path.name


def test_import_kernels_from_the_root_never_finds_ours():
    code = ("import importlib.util; s = importlib.util.find_spec('kernels'); "
            "print(s.origin if s else None); print(list(s.submodule_search_locations or []) if s else [])")
    out = run_in_root("-c", code)
    assert out.returncode == 0, out.stderr
    origin, locations = out.stdout.splitlines()
    ours = str(REPO / "kernels")
    assert not origin.startswith(ours)  # no regular package of ours; a namespace portion at most
    if origin == "None" and ours in locations:  # no hub `kernels` installed: transformers must see none
        probe = run_in_root("-c", "from transformers.utils import is_kernels_available; print(is_kernels_available())")
        assert probe.stdout.strip() == "False", probe.stderr


def test_readme_snippet_runs_with_python_c_in_the_root():
    out = run_in_root("-c", readme_python_snippet())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in ("length", "stop")


def test_readme_snippet_runs_as_a_script_in_the_root():
    script = REPO / f"readme_snippet_{uuid.uuid4().hex}.py"  # a script's folder is sys.path[0]
    script.write_text(readme_python_snippet())
    try:
        out = run_in_root(str(script))
    finally:
        script.unlink()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in ("length", "stop")


@pytest.mark.slow
def test_the_wheel_ships_kernels_inside_bare_engine(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "bare_engine/kernels/sampling_ref.py" in names and "bare_engine/kernels/attention.py" in names
    assert {"bare_engine/kernels/cpu_attention.c", "bare_engine/kernels/cpu_sampling.c", "bare_engine/kernels/cpu_fused.c",
            "bare_engine/kernels/cpu_linear.c", "bare_engine/kernels/cpu_dtype.h"} <= set(names)  # built on first use
    assert not any(n.startswith("kernels/") for n in names)
