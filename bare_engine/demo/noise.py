"""Realistic noise for the demo world's training data: wrong answers, typos, off-format lines.

Each corruption returns a new {"question", "answer"} record; the clean record is not changed.
"""

from __future__ import annotations

import random
import re

from bare_engine.demo import lexicon as lx
from bare_engine.demo.world import final_number, read_problem

_STEP = re.compile(r"= (\d+)")


def _shift(rng: random.Random, value: int) -> int:
    delta = rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    return value + delta if value + delta >= 0 else value + abs(delta)


def wrong_final(record: dict, rng: random.Random) -> dict:
    final = int(final_number(record["answer"]))
    head = record["answer"].rsplit("####", 1)[0]
    return {"question": record["question"], "answer": f"{head}#### {_shift(rng, final)}"}


def wrong_step(record: dict, rng: random.Random) -> dict:
    """An arithmetic slip in one step, carried through to a wrong final number."""
    lines = record["answer"].split("\n")
    steps = [i for i, line in enumerate(lines) if _STEP.search(line)]
    ops = read_problem(record["question"]).steps
    if not steps:
        return wrong_final(record, rng)
    i = rng.choice(steps)
    value = _shift(rng, int(_STEP.search(lines[i]).group(1)))
    lines[i] = _STEP.sub(f"= {value}", lines[i])
    for j in range(i + 1, len(lines) - 1):
        op, k = ops[j - 1]
        new = {"+": value + k, "-": value - k, "*": value * k, "/": value // k}[op]
        lines[j] = re.sub(r"\d+ ([-+*/]) (\d+) = \d+", f"{value} \\1 \\2 = {new}", lines[j])
        value = new
    if value == final_number(record["answer"]):
        return wrong_final(record, rng)
    lines[-1] = f"#### {value}"
    return {"question": record["question"], "answer": "\n".join(lines)}


def changed_number(record: dict, rng: random.Random) -> dict:
    """A number in the question changes but the answer does not (the answer is now wrong)."""
    numbers = list(re.finditer(r"\d+", record["question"]))
    for _ in range(10):
        m = rng.choice(numbers)
        new = str(_shift(rng, int(m.group())))
        question = record["question"][: m.start()] + new + record["question"][m.end():]
        if new != m.group() and read_problem(question) is not None:
            return {"question": question, "answer": record["answer"]}
    return wrong_final(record, rng)


def typo(record: dict, rng: random.Random) -> dict:
    """Swap, drop or double a letter in one lower-case word of the question."""
    words = record["question"].split(" ")
    candidates = [i for i, w in enumerate(words) if re.fullmatch(r"[a-z]{4,}[.?]?", w)]
    while True:
        i = rng.choice(candidates)
        word = words[i]
        j = rng.randrange(1, len(word.rstrip(".?")) - 1)
        kind = rng.randrange(3)
        if kind == 0:
            new = word[:j] + word[j + 1] + word[j] + word[j + 2:]
        elif kind == 1:
            new = word[:j] + word[j + 1:]
        else:
            new = word[:j] + word[j] + word[j:]
        if new != word:
            words[i] = new
            return {"question": " ".join(words), "answer": record["answer"]}


def wrong_item(record: dict, rng: random.Random) -> dict:
    """The question's last sentence asks about a different item."""
    reading = read_problem(record["question"])
    others = [p for phrases, _, _ in lx.CATEGORIES.values() for p in phrases if p != reading.items]
    head, _, last = record["question"].rpartition(". ")
    last = last.replace(reading.items, rng.choice(others))
    return {"question": f"{head}. {last}", "answer": record["answer"]}


def off_format(record: dict, rng: random.Random) -> dict:
    lines = record["answer"].split("\n")
    final = lines[-1].replace("####", "").strip()
    kind = rng.randrange(4)
    if kind == 0:
        lines[-1] = f"The answer is {final}."
    elif kind == 1:
        lines = lines[:-1]
    elif kind == 2 and len(lines) > 3:
        del lines[rng.randrange(1, len(lines) - 1)]
    else:
        lines = [" ".join(lines[:-1]), lines[-1]]
    return {"question": record["question"], "answer": "\n".join(lines)}


CORRUPTIONS = {
    "wrong_final": wrong_final, "wrong_step": wrong_step, "changed_number": changed_number,
    "typo": typo, "wrong_item": wrong_item, "off_format": off_format,
}


def corrupt(record: dict, rng: random.Random, kind: str | None = None) -> dict:
    """A corrupted copy of a clean, parseable record (kind chosen at random when None)."""
    return CORRUPTIONS[kind or rng.choice(list(CORRUPTIONS))](record, rng)
