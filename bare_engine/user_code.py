"""Objects named in configs and flags as ``package.module:name`` (or ``path/to/file.py:name``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from bare_engine.errors import ConfigError


def import_object(spec: str, what: str) -> object:
    """The object ``spec`` names; ConfigError naming ``what`` and ``spec`` when it cannot be found."""
    module_name, sep, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {spec!r}: expected module:name")
    try:
        module = _import(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} {spec!r}: {module_name} has no attribute {attr}")
    return getattr(module, attr)


def _import(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(module_name)
