"""Default prompt templates for the BARE pipeline (overridable in the run config).

Templates are `str.format` strings. Placeholders:
  {task}      the task description
  {examples}  the seed examples, each rendered with `example` and wrapped in the markers
  {candidate} the candidate to refine, rendered like an example (refine_prompt only)
  {separator} {start_marker} {end_marker}  the configured strings
  {<field>}   inside `example`: one of the configured fields
The base prompt ends with an open start marker and the end marker is the stop string,
as in the BARE paper's base stage.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from bare_engine.errors import ConfigError

DEFAULT_TASK = "Grade-school math word problems. Each has a question and a worked answer that ends with '#### <final number>'."

# Placeholders each prompt template may use (besides the fields inside `example`).
PROMPT_PLACEHOLDERS = {
    "base_prompt": {"task", "separator", "examples", "start_marker", "end_marker"},
    "refine_prompt": {"task", "separator", "examples", "start_marker", "end_marker", "candidate"},
    "instruct_prompt": {"task", "separator", "examples", "start_marker", "end_marker"},
}


@dataclass
class Templates:
    start_marker: str = "<example>\n"
    end_marker: str = "\n</example>"
    separator: str = "\n\n"
    example: str = "Question: {question}\nAnswer: {answer}"
    # Field markers used to parse a candidate back into fields, in the order the fields
    # appear in `example`. The first marker may be empty: that field starts at the beginning.
    field_markers: dict[str, str] = field(
        default_factory=lambda: {"question": "Question:", "answer": "Answer:"}
    )
    base_prompt: str = "{task}{separator}{examples}{separator}{start_marker}"
    refine_prompt: str = (
        "{task}\n\nHere are some examples:{separator}{examples}{separator}"
        "Improve the following example. Fix any errors, make it unambiguous, keep its theme, "
        "and match the style of the examples. Start your response with the question."
        "{separator}{candidate}"
    )
    instruct_prompt: str = (
        "{task}\n\nHere are some examples:{separator}{examples}{separator}"
        "Write one new example in the same format. Start your response with the question."
    )

    @property
    def stop_string(self) -> str:
        """The base stage's stop string: the end marker without surrounding whitespace."""
        return self.end_marker.strip() or self.end_marker

    def render_example(self, record: dict[str, str]) -> str:
        return self.start_marker + self.example.format(**record) + self.end_marker

    def render_examples(self, records: list[dict[str, str]]) -> str:
        return self.separator.join(self.render_example(r) for r in records)

    def _common(self, task: str, seeds: list[dict[str, str]]) -> dict[str, str]:
        return dict(
            task=task, separator=self.separator, examples=self.render_examples(seeds),
            start_marker=self.start_marker, end_marker=self.end_marker,
        )

    def base(self, task: str, seeds: list[dict[str, str]]) -> str:
        return self.base_prompt.format(**self._common(task, seeds))

    def refine(self, task: str, seeds: list[dict[str, str]], candidate: dict[str, str]) -> str:
        """The user message of the refine chat (rendered through the chat template by the caller)."""
        return self.refine_prompt.format(
            **self._common(task, seeds), candidate=self.render_example(candidate)
        )

    def instruct(self, task: str, seeds: list[dict[str, str]]) -> str:
        """The user message of the instruct-only baseline chat."""
        return self.instruct_prompt.format(**self._common(task, seeds))

    def parse(self, text: str) -> dict[str, str] | None:
        """Split generated text into fields by the field markers; None when a field is missing or empty."""
        return self.parse_with_reason(text)[0]

    def parse_with_reason(self, text: str) -> tuple[dict[str, str] | None, str | None]:
        """(fields, None) on success, else (None, reason) with reason "missing:<field>" or "empty:<field>"."""
        fields: dict[str, str] = {}
        rest = text
        markers = self.ordered_markers()
        for i, (name, marker) in enumerate(markers):
            pos = rest.find(marker)
            if pos < 0:
                return None, f"missing:{name}"
            rest = rest[pos + len(marker):]
            if i + 1 < len(markers):
                next_name, next_marker = markers[i + 1]
                end = rest.find(next_marker)
                if end < 0:
                    return None, f"missing:{next_name}"
                value, rest = rest[:end], rest[end:]
            else:
                value = rest.split(self.stop_string)[0] if self.end_marker.strip() else rest
            value = value.strip()
            if not value:
                return None, f"empty:{name}"
            fields[name] = value
        return fields, None

    def ordered_markers(self) -> list[tuple[str, str]]:
        """(field, marker) pairs in the order the fields appear in `example`."""
        order = {name: i for i, name in enumerate(dict.fromkeys(placeholders(self.example)))}
        return sorted(self.field_markers.items(), key=lambda item: order.get(item[0], len(order)))

    def validate(self, fields: list[str]) -> None:
        """Raise ConfigError when a template names an unknown placeholder or the markers do not match the fields."""
        _check_placeholders("templates.example", self.example, set(fields))
        for name, allowed in PROMPT_PLACEHOLDERS.items():
            _check_placeholders(f"templates.{name}", getattr(self, name), allowed)
        if set(self.field_markers) != set(fields) or len(self.field_markers) != len(fields):
            raise ConfigError(
                f"templates.field_markers must have one marker per field {fields}, got {list(self.field_markers)}"
            )
        unused = [name for name in fields if name not in placeholders(self.example)]
        if unused:
            raise ConfigError(f"templates.example does not use the field {{{unused[0]}}}")
        for i, (name, marker) in enumerate(self.ordered_markers()):
            if not marker and i > 0:
                raise ConfigError(f"templates.field_markers: only the first field may have an empty marker ('{name}')")
        if not self.start_marker or not self.end_marker:
            raise ConfigError("templates.start_marker and templates.end_marker must not be empty")


def placeholders(template: str) -> list[str]:
    """The placeholder names of a str.format template (ValueError on malformed braces)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check_placeholders(key: str, template: str, allowed: set[str]) -> None:
    try:
        names = placeholders(template)
    except ValueError as e:
        raise ConfigError(f"{key}: malformed template ({e}); write literal braces as {{{{ and }}}}") from None
    for name in names:
        if name not in allowed:
            what = "an unknown field" if key == "templates.example" else "an unknown placeholder"
            raise ConfigError(f"{key} refers to {what} {{{name}}}; allowed: {', '.join(sorted(allowed))}")
