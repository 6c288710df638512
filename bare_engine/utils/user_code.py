"""Objects named in configs and flags as ``package.module:name`` (or ``path/to/file.py:name``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from bare_engine.errors import ConfigError


def import_object(spec: str, what: str, kind: str = "attribute") -> object:
    """The object ``spec`` names; ConfigError naming ``what`` and ``spec`` when it cannot be found.

    ``kind`` names the object in messages ("function" for a callable the user wrote).
    """
    module_name, sep, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {spec!r}: expected module:{kind}")
    try:
        module = _import(module_name, what)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    obj = getattr(module, attr, None)
    if obj is None or (kind == "function" and not callable(obj)):
        raise ConfigError(f"{what} {spec!r}: {module_name} has no {kind} {attr}")
    return obj


def _import(module_name: str, what: str):
    """An importable module by name, else a .py file (a path, or a dotted name in the working directory)."""
    if not module_name.endswith(".py"):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            path = Path(module_name.replace(".", "/") + ".py")
            if not path.is_file():
                raise
    else:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"{what}: no such file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module
