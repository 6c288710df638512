"""The BARE paper's tasks as run presets: `bare-engine run --preset NAME`.

Each preset is a config file (`<name>.toml`) with the paper's fields, markers, stop string,
prompts, k=3 fixed seed examples (`<name>.seeds.jsonl`) and sampling settings, taken from
the authors' code (github.com/pgasawa/BARE, MIT licence: LICENSE-BARE here) by
scripts/make_presets.py. A preset lies under the config file and the flags, so any of its
keys can be overridden.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from bare_engine.errors import ConfigError

PRESETS_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_file(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())} (or 'list')")
    return path


def describe_presets() -> list[tuple[str, str, str]]:
    """(name, fields, description) of every preset, for `--preset list`."""
    rows = []
    for name in preset_names():
        data = tomllib.loads(preset_file(name).read_text(encoding="utf-8"))
        fields = ", ".join(data.get("fields", []))
        grounded = data.get("grounding_fields") or []
        if grounded:
            fields += f" (given: {', '.join(grounded)})"
        rows.append((name, fields, data.get("task", "")))
    return rows
