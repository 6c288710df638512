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


# ---------------------------------------------------------------- the base model's slips
# Slips that make a question unreadable, as the trained base model makes them (in 400 of its
# records: 40 of 68 unreadable ones halve an odd number, most of them the start amount; the
# rest name someone else or another item, or mix up pronouns). `repair.repair` undoes each.
# They are kept apart from CORRUPTIONS, whose draws the base model's training data depends on.


def odd_start(record: dict, rng: random.Random) -> dict | None:
    """The start amount one less, so the first step's division no longer comes out even."""
    reading = read_problem(record["question"])
    if len(reading.start) != 1 or reading.steps[0][0] != "/":
        return None
    k = reading.start[0]
    question = re.sub(rf"\b{k}\b", str(k - 1), record["question"], count=1)
    answer = record["answer"].replace(f"with {k} ", f"with {k - 1} ", 1)
    return {"question": question, "answer": answer}


def other_name(record: dict, rng: random.Random) -> dict | None:
    """The last sentence asks about someone else."""
    reading = read_problem(record["question"])
    head, _, last = record["question"].rpartition(". ")
    if reading.name not in last:
        return None
    last = last.replace(reading.name, rng.choice([n for n in lx.NAMES if n != reading.name]))
    return {"question": f"{head}. {last}", "answer": record["answer"]}


_SWAP = {"He": "She", "She": "He", "he": "she", "she": "he", "his": "her", "him": "her"}


def other_gender(record: dict, rng: random.Random) -> dict | None:
    """One sentence's pronouns are the other gender's."""
    sentences = record["question"].split(". ")
    with_pronoun = [i for i, s in enumerate(sentences) if re.search(r"\b(?:He|She|he|she|his|him)\b", s)]
    if not with_pronoun:
        return None
    i = rng.choice(with_pronoun)
    sentences[i] = re.sub(r"\b(?:He|She|he|she|his|him)\b", lambda m: _SWAP[m.group()], sentences[i])
    return {"question": ". ".join(sentences), "answer": record["answer"]}


def take_too_many(record: dict, rng: random.Random) -> dict | None:
    """A step takes away more than there is."""
    reading = read_problem(record["question"])
    value = reading.start[0] * (reading.start[1] if len(reading.start) == 2 else 1)
    for (op, k), sentence in zip(reading.steps, reading.step_sentences):
        if op == "-" and str(k) in sentence:
            too_many = value + rng.randint(1, 3)
            question = record["question"].replace(sentence, sentence.replace(str(k), str(too_many), 1), 1)
            if question != record["question"]:
                return {"question": question, "answer": record["answer"]}
        value = {"+": value + k, "-": value - k, "*": value * k, "/": value // k}[op]
    return None


SLIPS = {"odd_start": odd_start, "other_name": other_name, "other_gender": other_gender,
         "take_too_many": take_too_many}
# How often the base model makes each (odd starts are most of its unreadable questions).
SLIP_WEIGHTS = {"odd_start": 0.5, "other_name": 0.2, "other_gender": 0.15, "take_too_many": 0.15}


def slip(record: dict, rng: random.Random, kind: str | None = None) -> dict | None:
    """A copy of a clean record with one of the base model's slips (None when `kind` does not
    apply to this problem; a random kind when None)."""
    kind = kind or rng.choices(list(SLIP_WEIGHTS), weights=list(SLIP_WEIGHTS.values()))[0]
    return SLIPS[kind](record, rng)
