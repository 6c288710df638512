"""The demo toy world: grade-school arithmetic word problems.

`generate_problem` samples a problem from the grammar in `lexicon`; `check` reads a
problem's question text back into operations (regexes compiled from the same
grammar), recomputes the answer and compares it with the number after `####`.
The checker never sees the generator's internal state.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from bare_engine.demo import lexicon as lx

# ---------------------------------------------------------------- generator


@dataclass
class WorldSlice:
    """Which part of the grammar to sample from (the full world by default)."""

    names: tuple[str, ...] = tuple(lx.NAMES)
    categories: tuple[str, ...] = tuple(lx.CATEGORIES)
    items: tuple[str, ...] | None = None  # restrict item phrases (None: all of the categories')
    starts: tuple[int, ...] = tuple(range(len(lx.START)))
    min_ops: int = 1
    max_ops: int = 3
    # Small numbers keep the arithmetic learnable for a 3M-parameter model.
    max_start: int = 20
    max_amount: int = 9  # added or taken away
    max_factor: int = 3  # "k times as many"
    max_divisor: int = 5
    max_table: int = 6  # "k groups with k2 in each": k, k2 <= this
    max_value: int = 50  # no multiplication beyond this
    allow_mul_div: bool = True
    decorate: bool = True  # settings, connectives, neutral sentences, varied questions


FULL = WorldSlice()
# The instruct model's answers to "write one problem" come from this narrow slice
# (instruct-tuned models collapse toward a few modes): few names, items and phrasings, but
# the seeds' arithmetic, so that its problems are no easier to get right than the base's.
NARROW = WorldSlice(
    names=("Mia", "Tom", "Sara"), categories=("fruit", "things"), items=("apples", "marbles"),
    starts=(0,), min_ops=2, decorate=False,
)


def _gender(name: str) -> str:
    return "girl" if name in lx.GIRLS else "boy"


def _pick_step(rng: random.Random, category: str, value: int, world: WorldSlice):
    """A step template that keeps every value a positive integer, and its amount."""
    steps = lx.STEPS_ALL + lx.STEPS_BY_CATEGORY[category]
    for _ in range(100):
        template, op, amount = rng.choice(steps)
        if op in "*/" and not world.allow_mul_div:
            continue
        if amount != "k":
            k = amount
        elif op == "+":
            k = rng.randint(2, world.max_amount)
        elif op == "-":
            if value < 3:
                continue
            k = rng.randint(2, min(world.max_amount, value - 1))
        elif op == "*":
            k = rng.randint(2, world.max_factor)
        else:
            divisors = [d for d in range(2, world.max_divisor + 1) if value % d == 0]
            if not divisors:
                continue
            k = rng.choice(divisors)
        if op == "*" and value * k > world.max_value or op == "/" and value % k:
            continue
        return template, op, k
    raise RuntimeError("no applicable step")  # unreachable: '+' always applies


def _fill(template: str, slots: dict) -> str:
    return template.format(**slots)


def _with_prefix(prefix: str, sentence: str) -> str:
    # A pronoun or "The/There" after a prefix is lower-cased; names and digits stay.
    first = sentence.split(" ", 1)[0]
    if first in ("He", "She", "The", "There"):
        sentence = sentence[0].lower() + sentence[1:]
    return f"{prefix} {sentence}"


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def generate_problem(rng: random.Random, world: WorldSlice = FULL) -> dict:
    """A clean problem: {"question", "answer" (worked, ends with '#### N'), "final"}."""
    name = rng.choice(world.names)
    category = rng.choice(world.categories)
    phrases, boxes, groups = lx.CATEGORIES[category]
    items = rng.choice([p for p in phrases if world.items is None or p in world.items] or phrases)
    group_pl, group_sg = rng.choice(groups)
    slots = dict(lx.PRONOUNS[_gender(name)], N=name, items=items, box=rng.choice(boxes),
                 groups=group_pl, group=group_sg, gift=rng.choice(lx.GIFTS))
    friends = [n for n in world.names if n != name] or [n for n in lx.NAMES if n != name]
    n_ops = rng.randint(world.min_ops, world.max_ops)

    starts = [i for i in world.starts if not (category in lx.MASS and "{groups} of" in lx.START[i][0])]
    start, kind = lx.START[rng.choice(starts)]
    if kind == "k*k2":
        slots.update(k=rng.randint(2, world.max_table), k2=rng.randint(2, world.max_table))
        value = slots["k"] * slots["k2"]
        n_ops -= 1
    else:
        slots.update(k=rng.randint(4, world.max_start))
        value = slots["k"]
    sentence = _fill(start, slots)
    if world.decorate and rng.random() < 0.4:
        sentence = _with_prefix(rng.choice(lx.SETTINGS) + ",", sentence)
    question = [sentence]

    for i in range(max(n_ops, 1)):
        if world.decorate and rng.random() < 0.15:
            question.append(_fill(rng.choice(lx.NEUTRAL), dict(slots, F=rng.choice(friends))))
        template, op, k = _pick_step(rng, category, value, world)
        sentence = _fill(template, dict(slots, k=k, F=rng.choice(friends)))
        if world.decorate and i > 0 and rng.random() < 0.35:
            sentence = _with_prefix(rng.choice(lx.CONNECTIVES), sentence)
        question.append(sentence)
        value = _apply(op, value, k)

    asks = lx.QUESTIONS if world.decorate else lx.QUESTIONS[:1]
    question.append(_fill(rng.choice(asks), slots))
    text = " ".join(question)
    # The worked answer is read back from the text; `final` is the generator's own arithmetic.
    return {"question": text, "answer": worked_answer(text), "final": value}


# ---------------------------------------------------------------- checker

def _words(words) -> str:
    return "|".join(sorted(set(map(re.escape, words)), key=len, reverse=True))


_SLOT_PATTERNS = {
    "N": r"[A-Z][a-z]+", "F": r"[A-Z][a-z]+", "P": r"He|She", "p": r"he|she", "O": r"him|her",
    "S": r"his|her", "k": r"\d+", "k2": r"\d+", "items": r"[a-z]+(?: [a-z]+){0,2}?",
    "groups": _words(g for _, _, groups in lx.CATEGORIES.values() for g, _ in groups),
    "group": _words(g for _, _, groups in lx.CATEGORIES.values() for _, g in groups),
    "box": _words(b for _, boxes, _ in lx.CATEGORIES.values() for b in boxes),
    "gift": _words(lx.GIFTS),
}
_GENDER_WORDS = {"he": "boy", "him": "boy", "his": "boy", "she": "girl", "her": "girl"}


@functools.lru_cache(maxsize=None)
def _compile(template: str) -> re.Pattern:
    parts, seen = [], set()
    for literal, slot in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        parts.append(re.escape(literal))
        if slot:
            parts.append(f"(?P={slot})" if slot in seen else f"(?P<{slot}>{_SLOT_PATTERNS[slot]})")
            seen.add(slot)
    return re.compile("".join(parts) + r"\Z")


def _match(sentence: str, templates):
    """(fields, entry) for the first template entry that matches the whole sentence."""
    for entry in templates:
        m = _compile(entry[0] if isinstance(entry, tuple) else entry).match(sentence)
        if m:
            return m.groupdict(), entry
    return None, None


_PREFIX = re.compile(
    r"^(?:(?:" + "|".join(map(re.escape, lx.SETTINGS)) + r"),|"
    + "|".join(map(re.escape, lx.CONNECTIVES)) + r") "
)
_ALL_STEPS = lx.STEPS_ALL + [s for steps in lx.STEPS_BY_CATEGORY.values() for s in steps]


def _strip_prefix(sentence: str) -> str:
    rest = _PREFIX.sub("", sentence, count=1)
    return rest[:1].upper() + rest[1:]


def _split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]


@dataclass
class Reading:
    """What a question's text says: who, what, the start amount and the operations."""

    name: str
    items: str
    gender: str
    start: tuple[int, ...]  # (k,) or (k, k2) for a product start
    steps: list[tuple[str, int]]  # (operator, amount)
    step_sentences: list[str]  # each step's sentence, without its connective
    value: int


class _Reader:
    """Keeps the protagonist, the item phrase and the pronoun gender consistent."""

    def __init__(self):
        self.fields: dict[str, str] = {}
        self.genders: set[str] = set()

    def consistent(self, fields: dict) -> bool:
        for key in ("N", "items"):
            if key in fields:
                if self.fields.setdefault(key, fields[key]) != fields[key]:
                    return False
        self.genders |= {_GENDER_WORDS[fields[s].lower()] for s in ("P", "p", "O", "S") if s in fields}
        return len(self.genders) <= 1


def _read_steps(sentences: list[str], reader: _Reader, value: int) -> list[tuple[str, int, str]] | None:
    steps = []
    for sentence in sentences:
        sentence = _strip_prefix(sentence)
        fields, entry = _match(sentence, _ALL_STEPS)
        if fields is None:
            fields, _ = _match(sentence, lx.NEUTRAL)
            if fields is None or not reader.consistent(fields):
                return None
            continue
        if not reader.consistent(fields):
            return None
        _, op, amount = entry
        k = int(fields["k"]) if amount == "k" else amount
        if k <= 0 or op == "/" and value % k or op == "-" and k > value:
            return None
        value = _apply(op, value, k)
        steps.append((op, k, sentence))
    return steps


def read_problem(question: str) -> Reading | None:
    """Parse a question back into operations; None when it does not parse or is ill-posed."""
    sentences = _split_sentences(question)
    if len(sentences) < 3 or not sentences[-1].endswith("?"):
        return None
    reader = _Reader()
    fields, entry = _match(_strip_prefix(sentences[0]), lx.START)
    if fields is None or not reader.consistent(fields):
        return None
    start = (int(fields["k"]), int(fields["k2"])) if entry[1] == "k*k2" else (int(fields["k"]),)
    value = start[0] * (start[1] if len(start) == 2 else 1)
    steps = _read_steps(sentences[1:-1], reader, value)
    if not steps:
        return None
    fields, _ = _match(sentences[-1], lx.QUESTIONS)
    if fields is None or not reader.consistent(fields):
        return None
    for op, k, _ in steps:
        value = _apply(op, value, k)
    name = reader.fields["N"]
    gender = next(iter(reader.genders)) if reader.genders else _gender(name)
    if name in lx.NAMES and gender != _gender(name):
        return None
    return Reading(name, reader.fields["items"], gender, start, [s[:2] for s in steps], [s[2] for s in steps], value)


def solve(question: str) -> int | None:
    """The answer the question's text implies, or None when it does not parse or is ill-posed."""
    reading = read_problem(question)
    return None if reading is None else reading.value


def worked_answer(question: str) -> str | None:
    """The clean worked answer (ending '#### N') that the question's text implies."""
    r = read_problem(question)
    if r is None:
        return None
    slots = dict(lx.PRONOUNS[r.gender], N=r.name, items=r.items)
    value = r.start[0] * (r.start[1] if len(r.start) == 2 else 1)
    if len(r.start) == 2:
        lines = [_fill(lx.ANSWER_START["k*k2"], dict(slots, k=r.start[0], k2=r.start[1], v=value))]
    else:
        lines = [_fill(lx.ANSWER_START["k"], dict(slots, k=value))]
    for (op, k), sentence in zip(r.steps, r.step_sentences):
        new = _apply(op, value, k)
        step = _with_prefix("Then", sentence)[:-1]
        lines.append(_fill(lx.ANSWER_STEP, dict(slots, step=step, a=value, op=op, b=k, v=new)))
        value = new
    return "\n".join(lines + [f"#### {value}"])


_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def final_number(answer_text: str) -> float | None:
    """The number after the last '####' in a worked answer, or None."""
    found = _FINAL.findall(answer_text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def check(record: dict) -> bool:
    """True when the question parses and the answer's final number equals the recomputed value."""
    expected = solve(str(record.get("question", "")))
    got = final_number(str(record.get("answer", "")))
    return expected is not None and got is not None and abs(got - expected) < 1e-9
