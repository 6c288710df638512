"""Verifiable checks: a user function `check(fields: dict[str, str]) -> bool` run on every record."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bare_engine.errors import ConfigError

Check = Callable[[dict[str, str]], bool]


def load_check(spec: str) -> Check:
    """`package.module:function` or `path/to/file.py:function`."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"--check {spec!r}: expected module:function")
    try:
        module = _import(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(f"--check {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"--check {spec!r}: {module_name} has no function {func_name}")
    return func


def _import(module_name: str):
    """An importable module by name, else a .py file (a path, or a dotted name in the working directory)."""
    if not module_name.endswith(".py"):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError:
            pass
    path = Path(module_name) if module_name.endswith(".py") else Path(module_name.replace(".", "/") + ".py")
    if not path.is_file():
        if not module_name.endswith(".py"):
            return importlib.import_module(module_name)  # re-raise the import error
        raise ConfigError(f"--check: no such file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@dataclass
class CheckResult:
    name: str
    passed: int
    total: int
    errors: int  # records where the check raised (counted as not passed)
    first_error: str | None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def to_json(self) -> dict:
        return {"check": self.name, "pass_rate": self.pass_rate, "passed": self.passed, "total": self.total,
                "errors": self.errors, "first_error": self.first_error}


def run_check(name: str, check: Check, records: list[dict[str, str]]) -> CheckResult:
    passed = errors = 0
    first_error = None
    for fields in records:
        try:
            passed += bool(check(dict(fields)))
        except Exception as exc:  # a crashing check fails that record, it does not stop the evaluation
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    return CheckResult(name, passed, len(records), errors, first_error)
