"""Annotate mode's prompt: a template, a few labeled seed examples, and the example to label.

Config keys (see PipelineConfig): `annotate_template` is the whole prompt, with the
placeholders {task}, {labels} (the label set, comma-separated), {examples} (the seeds, each
rendered with `annotate_example`, separated by a blank line) and {input} (the unlabeled
example rendered with `annotate_example`, cut just before its label). `annotate_example`
must end with the {<label_field>} placeholder; empty means one "Name: {field}" line per
input field, then the label line.

The answer the teacher writes is the whitespace that precedes the label placeholder in
`annotate_example` followed by the label: the prompt ends at "...\nLabel:" and the answer
is " positive". Each label has one canonical tokenization: the tokens that "Label: positive"
adds after "Label:" (the literal text before the placeholder, without its trailing whitespace).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from bare_engine.errors import ConfigError
from bare_engine.pipeline.templates import DEFAULT_TASK

DEFAULT_ANNOTATE_TEMPLATE = "{task}\n\n{examples}\n\n{input}"
TEMPLATE_PLACEHOLDERS = ("task", "labels", "examples", "input")
EXAMPLE_SEPARATOR = "\n\n"
DEFAULT_STOP = ["\n\n"]  # generation tasks: an example ends at the blank line before the next one
_CUT = "\x00label\x00"  # stands in for the label while the query is rendered


def default_example(input_fields: list[str], label_field: str) -> str:
    return "\n".join(f"{name.replace('_', ' ').capitalize()}: {{{name}}}" for name in [*input_fields, label_field])


def default_task(label_field: str, labels: list[str] | None) -> str:
    name = label_field.replace("_", " ")
    if labels:
        return f"Give each example its {name}: one of {', '.join(labels)}."
    return f"Write the {name} of each example."


@dataclass(frozen=True)
class AnnotatePrompt:
    template: str
    example: str
    input_fields: list[str]
    label_field: str
    labels: list[str] | None
    task: str

    @classmethod
    def from_config(cls, cfg) -> "AnnotatePrompt":
        """From a validated PipelineConfig; the bare-mode default task is replaced by a labeling one."""
        example = cfg.annotate_example or default_example(cfg.input_fields, cfg.label_field)
        task = cfg.task if cfg.task != DEFAULT_TASK else default_task(cfg.label_field, cfg.labels)
        return cls(cfg.annotate_template, example, list(cfg.input_fields), cfg.label_field, cfg.labels, task)

    @property
    def seed_fields(self) -> list[str]:
        return [*self.input_fields, self.label_field]

    @property
    def answer_context(self) -> tuple[str, str]:
        """(probe, lead): the literal text before the label placeholder without its trailing
        whitespace, and that whitespace (which starts the answer)."""
        before = _literal_before(self.example, self.label_field)
        probe = before.rstrip()
        return probe, before[len(probe):]

    def render_example(self, fields: dict[str, str]) -> str:
        return self.example.format(**fields)

    def query(self, fields: dict[str, str]) -> str:
        """The example without its label, ending where the teacher's answer starts."""
        text = self.example.format(**{**fields, self.label_field: _CUT})
        text = text[: text.index(_CUT)]
        lead = self.answer_context[1]
        return text[: len(text) - len(lead)]

    def prompt(self, shots: list[dict[str, str]], fields: dict[str, str]) -> str:
        return self.template.format(
            task=self.task,
            labels=", ".join(self.labels or []),
            examples=EXAMPLE_SEPARATOR.join(self.render_example(s) for s in shots),
            input=self.query(fields),
        )


def _placeholders(key: str, template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{key}: malformed template ({e}); write literal braces as {{{{ and }}}}") from None


def _literal_before(example: str, label_field: str) -> str:
    parts = list(string.Formatter().parse(example))
    return next(literal for literal, name, _, _ in reversed(parts) if name == label_field)


LABEL_CONSTRAINTS = ("trie", "choice")


def validate_annotate(cfg) -> None:
    """ConfigError for annotate keys that cannot work (no files read)."""
    if not cfg.input:
        raise ConfigError("mode annotate needs an input file of unlabeled examples (set 'input' or --input)")
    if not cfg.input_fields:
        raise ConfigError("input_fields must name at least one field")
    for name in [*cfg.input_fields, cfg.label_field]:
        if not name.isidentifier():
            raise ConfigError(f"field name {name!r} must be a Python identifier (it is a template placeholder)")
    if len(set(cfg.input_fields)) != len(cfg.input_fields):
        raise ConfigError(f"input_fields has duplicates: {cfg.input_fields}")
    if cfg.label_field in cfg.input_fields:
        raise ConfigError(f"label_field '{cfg.label_field}' is also one of the input_fields")
    _validate_labels(cfg.labels)
    if cfg.label_constraint not in LABEL_CONSTRAINTS:
        raise ConfigError(f"label_constraint must be one of {', '.join(LABEL_CONSTRAINTS)}, got {cfg.label_constraint!r}")
    if any(not s for s in cfg.stop):
        raise ConfigError("stop strings must not be empty")
    _validate_templates(cfg)


def _validate_labels(labels: list[str] | None) -> None:
    if labels is None:
        return  # a generation task
    if not labels:
        raise ConfigError("labels is empty: list at least two labels, or leave 'labels' out for a generation task")
    blank = [label for label in labels if not label.strip()]
    if blank:
        raise ConfigError(f"labels must not be blank, got {blank[0]!r}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"labels has duplicates: {labels}")
    if len(labels) < 2:
        raise ConfigError(f"labels needs at least two labels, got {labels}")


def _validate_templates(cfg) -> None:
    names = _placeholders("annotate_template", cfg.annotate_template)
    for name in names:
        if name not in TEMPLATE_PLACEHOLDERS:
            raise ConfigError(
                f"annotate_template refers to an unknown placeholder {{{name}}}; allowed: {', '.join(TEMPLATE_PLACEHOLDERS)}"
            )
    if "input" not in names:
        raise ConfigError("annotate_template must contain {input} (the example to label)")
    if not cfg.annotate_example:
        return
    fields = [*cfg.input_fields, cfg.label_field]
    names = _placeholders("annotate_example", cfg.annotate_example)
    for name in names:
        if name not in fields:
            raise ConfigError(f"annotate_example refers to an unknown field {{{name}}}; allowed: {', '.join(fields)}")
    last = list(string.Formatter().parse(cfg.annotate_example))[-1]
    if names.count(cfg.label_field) != 1 or last[1] != cfg.label_field:
        raise ConfigError(f"annotate_example must end with {{{cfg.label_field}}} and use it once")


def label_token_ids(tokenizer, labels: list[str], probe: str, lead: str) -> list[list[int]]:
    """Each label's canonical token ids as the teacher would write it after `probe` + `lead`;
    ConfigError for a label that adds no token, merges with the text before it, is made of
    special tokens, or tokenizes like another label."""

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    context = encode(probe)
    lead_only = encode(probe + lead)[len(context):]
    special = set(getattr(tokenizer, "all_special_ids", []))
    out: list[list[int]] = []
    for label in labels:
        full = encode(probe + lead + label)
        if full[: len(context)] != context:
            raise ConfigError(
                f"label {label!r} merges with the text before it ({probe[-20:]!r}) when tokenized; "
                "put a space or newline before the label placeholder"
            )
        ids = full[len(context):]
        if not ids or ids == lead_only:
            raise ConfigError(f"label {label!r} tokenizes to nothing with the teacher's tokenizer")
        if special & set(ids):
            raise ConfigError(f"label {label!r} tokenizes to special tokens of the teacher's tokenizer")
        if ids in out:
            other = labels[out.index(ids)]
            raise ConfigError(f"labels {other!r} and {label!r} tokenize to the same tokens")
        out.append(ids)
    return out


def match_label(token_ids: list[int], label_ids: list[list[int]]) -> int | None:
    """Index of the label the constrained output spells (a label that is a prefix of another ends
    with an end token), or None."""
    for candidate in (token_ids, token_ids[:-1]):
        if candidate in label_ids:
            return label_ids.index(candidate)
    return None
