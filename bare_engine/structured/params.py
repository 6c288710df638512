"""What a request constrains its output to, with vLLM's names (StructuredOutputsParams)."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass

from bare_engine.errors import InvalidSamplingParamsError

KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """Exactly one of: a JSON schema (dict or JSON text), a regex, a list of choices, an EBNF
    grammar (GBNF as xgrammar reads it), or ``json_object=True`` (any JSON object)."""

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # JSON without free whitespace between tokens (vLLM's disable_any_whitespace).
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidSamplingParamsError(f"invalid structured_outputs: {msg}")

        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            bad(f"set exactly one of {', '.join(KINDS)}; got {', '.join(given) or 'none'}")
        if self.json is not None and not isinstance(self.json, (dict, str)):
            bad(f"json must be a JSON schema (dict or JSON text), got {type(self.json).__name__}")
        if isinstance(self.json, str):
            try:
                _json.loads(self.json)
            except ValueError as exc:
                bad(f"json is not valid JSON text: {exc}")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            bad("regex must be a non-empty string")
        if self.choice is not None and (
            not isinstance(self.choice, list) or not self.choice or not all(isinstance(c, str) and c for c in self.choice)
        ):
            bad("choice must be a non-empty list of non-empty strings")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            bad("grammar must be a non-empty string")
        if self.json_object not in (None, True, False):
            bad(f"json_object must be a boolean, got {self.json_object!r}")

    def cache_key(self) -> tuple:
        """A hashable key for the compiled grammar: the kind and its canonical spec."""
        kind = self.kind
        value = getattr(self, kind)
        if kind == "json" and isinstance(value, dict):
            value = _json.dumps(value, sort_keys=True)
        elif kind == "choice":
            value = tuple(value)
        return kind, value, self.disable_any_whitespace
