"""The nearest well-posed question to one that does not read as a problem.

A base model's slips that make a question unreadable are local: a sentence names someone
else or another item, a pronoun has the wrong gender, half of an odd number is given away,
more is taken than there is. `repair` reads the question sentence by sentence with the
checker's templates and mends each slip with the smallest edit:

- every sentence is refilled with the protagonist's name, item phrase and pronouns (the
  name of the first sentence decides the gender; other people's names in {F} slots stay);
- a division that does not come out even rounds up the number that set the value just
  before it (the start amount, or a step's "k"), to the next multiple of the divisor;
- taking away more than there is takes one less than there is.

The demo's training script uses it to turn the base model's unreadable outputs into
"improve this" targets; it is not part of the checker.
"""

from __future__ import annotations

from dataclasses import dataclass

from bare_engine.demo import lexicon as lx
from bare_engine.demo.world import (
    _ALL_STEPS, _GENDER_WORDS, _PREFIX, _apply, _fill, _gender, _match, _split_sentences, _strip_prefix,
    _with_prefix, read_problem,
)


@dataclass
class _Sentence:
    prefix: str  # a setting or connective, with its comma ("" when none)
    template: str
    fields: dict
    op: str | None = None  # a step's operator (None for the start, neutral and question)
    amount: int | str | None = None  # "k" or the template's fixed amount

    def text(self) -> str:
        body = _fill(self.template, self.fields)
        return _with_prefix(self.prefix, body) if self.prefix else body


def _parse(sentence: str, templates) -> _Sentence | None:
    m = _PREFIX.match(sentence)
    prefix = m.group(0).strip() if m else ""
    fields, entry = _match(_strip_prefix(sentence), templates)
    if fields is None:
        return None
    template = entry if isinstance(entry, str) else entry[0]
    op, amount = entry[1:] if isinstance(entry, tuple) and len(entry) == 3 else (None, None)
    return _Sentence(prefix, template, dict(fields), op, amount)


def _protagonist(start: _Sentence, rest: list[_Sentence]) -> dict:
    name = start.fields["N"]
    if name in lx.NAMES:
        gender = _gender(name)
    else:
        said = [_GENDER_WORDS[s.fields[k].lower()] for s in [start] + rest for k in "PpOS" if k in s.fields]
        gender = said[0] if said else "boy"
    return dict(lx.PRONOUNS[gender], N=name, items=start.fields["items"])


def _refill(sentence: _Sentence, who: dict) -> None:
    for key, value in who.items():
        if key in sentence.fields:
            sentence.fields[key] = value


def _round_up_setter(setter: _Sentence, before: int, divisor: int) -> bool:
    """Make the value `setter` leaves a multiple of `divisor` by changing its number; False
    when its kind of step cannot be changed that way."""
    if setter.op is None and "k2" in setter.fields:  # "k groups with k2 in each"
        k = int(setter.fields["k"])
        k2 = next((k2 for k2 in range(int(setter.fields["k2"]), int(setter.fields["k2"]) + divisor + 1)
                   if k * k2 % divisor == 0), None)
        setter.fields["k2"] = str(k2)
        return True
    if setter.op is None:
        k = int(setter.fields["k"])
        setter.fields["k"] = str(k + (-k) % divisor)
        return True
    if setter.amount != "k" or setter.op not in "+-":
        return False
    k = int(setter.fields["k"])
    value = _apply(setter.op, before, k)
    up = (-value) % divisor
    new = k + up if setter.op == "+" else k - up
    if setter.op == "-" and new < 1:
        new = k + value % divisor
        if new > before:
            return False
    setter.fields["k"] = str(new)
    return True


def repair(question: str) -> str | None:
    """`question` itself when it reads as a problem, its nearest well-posed version when the
    slips are of the kinds above, else None."""
    if read_problem(question) is not None:
        return question
    texts = _split_sentences(question)
    if len(texts) < 3 or not texts[-1].endswith("?"):
        return None
    start = _parse(texts[0], lx.START)
    middle = [_parse(t, _ALL_STEPS) or _parse(t, lx.NEUTRAL) for t in texts[1:-1]]
    last = _parse(texts[-1], lx.QUESTIONS)
    if start is None or last is None or None in middle:
        return None
    who = _protagonist(start, middle + [last])
    for sentence in [start] + middle + [last]:
        _refill(sentence, who)
    if not _mend_arithmetic(start, [s for s in middle if s.op is not None]):
        return None
    fixed = " ".join(s.text() for s in [start] + middle + [last])
    return fixed if read_problem(fixed) is not None else None


def _mend_arithmetic(start: _Sentence, steps: list[_Sentence]) -> bool:
    value = int(start.fields["k"]) * int(start.fields.get("k2", 1))
    setter, before = start, 0
    for step in steps:
        k = int(step.fields["k"]) if step.amount == "k" else step.amount
        if step.op == "/" and value % k:
            if not _round_up_setter(setter, before, k):
                return False
            value = (int(start.fields["k"]) * int(start.fields.get("k2", 1)) if setter is start
                     else _apply(setter.op, before, int(setter.fields["k"])))
        elif step.op == "-" and k > value:
            if value < 2:
                return False
            step.fields["k"] = str(value - 1)
            k = value - 1
        setter, before = step, value
        value = _apply(step.op, value, k)
    return True
