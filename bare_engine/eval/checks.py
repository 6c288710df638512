"""Verifiable checks: a user function `check(fields: dict[str, str]) -> bool` run on every record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bare_engine.utils.user_code import import_object

Check = Callable[[dict[str, str]], bool]


def load_check(spec: str) -> Check:
    """`package.module:function` or `path/to/file.py:function`."""
    return import_object(spec, "--check", kind="function")


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
