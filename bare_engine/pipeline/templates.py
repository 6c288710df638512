"""Default prompt templates for the BARE pipeline (overridable in the run config).

Templates are `str.format` strings. Placeholders:
  {task}      the task description
  {examples}  the seed examples, each rendered with `example` and wrapped in the markers
  {candidate} the candidate to refine, rendered like an example (refine_prompt only)
  {separator} {start_marker} {end_marker}  the configured strings
  {n}         the number of the example the base model writes (k + 1)
  {<field>}   inside `example`: one of the configured fields; in refine_prompt: the
              candidate's fields; in every prompt: the candidate's grounding fields
              (e.g. a RAFT context, see `grounding` in config.py)
`{index}` in start_marker is the example's number (1, 2, ...). The base prompt ends with an
open start marker and the end marker is the stop string, as in the BARE paper's base stage.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from bare_engine.errors import ConfigError

DEFAULT_TASK = "Grade-school math word problems. Each has a question and a worked answer that ends with '#### <final number>'."

# Placeholders each prompt template may use (besides the fields inside `example`).
PROMPT_PLACEHOLDERS = {
    "base_prompt": {"task", "separator", "examples", "start_marker", "end_marker", "n"},
    "refine_prompt": {"task", "separator", "examples", "start_marker", "end_marker", "n", "candidate"},
    "instruct_prompt": {"task", "separator", "examples", "start_marker", "end_marker", "n"},
}
RESERVED_NAMES = set().union(*PROMPT_PLACEHOLDERS.values())


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
    # Wrap the examples (and the candidate) of the chat stages' prompts in the markers too;
    # the BARE paper shows them bare there.
    chat_markers: bool = True
    # The end of the base prompt that belongs to the candidate (e.g. "##Question: "): put back
    # before the base completion when it is parsed into fields.
    completion_prefix: str = ""

    @property
    def stop_string(self) -> str:
        """The base stage's stop string: the end marker without surrounding whitespace."""
        return self.end_marker.strip() or self.end_marker

    def open_marker(self, index: int) -> str:
        return self.start_marker.replace("{index}", str(index))

    def render_example(self, record: dict[str, str], index: int = 1, marked: bool = True) -> str:
        body = self.example.format(**record)
        return self.open_marker(index) + body + self.end_marker if marked else body

    def render_examples(self, records: list[dict[str, str]], marked: bool = True) -> str:
        return self.separator.join(self.render_example(r, i + 1, marked) for i, r in enumerate(records))

    def _common(self, task: str, seeds: list[dict[str, str]], marked: bool, grounding: dict | None) -> dict[str, str]:
        n = len(seeds) + 1
        return dict(
            grounding or {}, task=task, separator=self.separator, examples=self.render_examples(seeds, marked),
            start_marker=self.open_marker(n), end_marker=self.end_marker, n=str(n),
        )

    def base(self, task: str, seeds: list[dict[str, str]], grounding: dict | None = None) -> str:
        return self.base_prompt.format(**self._common(task, seeds, True, grounding))

    def refine(self, task: str, seeds: list[dict[str, str]], candidate: dict[str, str],
               grounding: dict | None = None) -> str:
        """The user message of the refine chat (rendered through the chat template by the caller)."""
        common = self._common(task, seeds, self.chat_markers, {**(grounding or {}), **candidate})
        return self.refine_prompt.format(
            **common, candidate=self.render_example(candidate, len(seeds) + 1, self.chat_markers)
        )

    def instruct(self, task: str, seeds: list[dict[str, str]], grounding: dict | None = None) -> str:
        """The user message of the instruct-only baseline chat."""
        return self.instruct_prompt.format(**self._common(task, seeds, self.chat_markers, grounding))

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

    def validate(self, fields: list[str], grounded: list[str] = ()) -> None:
        """Raise ConfigError when a template names an unknown placeholder or the markers do not match the
        fields (`grounded` fields come from the grounding file and are not parsed)."""
        _check_placeholders("templates.example", self.example, set(fields))
        reserved = sorted(RESERVED_NAMES & set(fields))
        if reserved:
            raise ConfigError(f"field name {reserved[0]!r} is a template placeholder; rename the field")
        for name, allowed in PROMPT_PLACEHOLDERS.items():
            extra = set(fields) if name == "refine_prompt" else set(grounded)
            _check_placeholders(f"templates.{name}", getattr(self, name), allowed | extra)
        parsed = [f for f in fields if f not in grounded]
        if set(self.field_markers) != set(parsed) or len(self.field_markers) != len(parsed):
            raise ConfigError(
                f"templates.field_markers must have one marker per field {parsed}"
                + (" (grounding fields have none)" if grounded else "") + f", got {list(self.field_markers)}"
            )
        if not self.base_prompt.endswith(self.completion_prefix):
            raise ConfigError(
                f"templates.completion_prefix {self.completion_prefix!r} must be the end of templates.base_prompt"
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
