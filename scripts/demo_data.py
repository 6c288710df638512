"""Training text for the demo models, rendered through the pipeline's own templates.

Base: documents of several problems in a row (the base prompt format continued), with
noise. Instruct: chat pairs for "write one problem" (answered from a narrow slice of the
world) and "improve this problem" (a noisy problem mapped to its corrected form; an unreadable
question to its nearest well-posed version, `bare_engine.demo.repair`).
"""

from __future__ import annotations

import random

from bare_engine.demo.noise import SLIP_WEIGHTS, corrupt, slip
from bare_engine.demo.repair import repair
from bare_engine.demo.world import FULL, NARROW, WorldSlice, generate_problem, worked_answer
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates

TEMPLATES = Templates()
TASK_VARIANTS = [
    "Math word problems for grade-school students, each with a worked answer ending in '#### <answer>'.",
    "Grade-school math word problems with step-by-step answers. The final answer follows '####'.",
    "Word problems about everyday counting. Each has a question and a worked answer that ends with '#### <number>'.",
    "Arithmetic story problems. Each answer shows the steps and ends with '#### <final number>'.",
]
STRAY_LINES = ["Here are more problems:", "---", "Note: check your work.", "(continued)", "Practice set"]
SEED_WORLD = FULL

# Share of base-document examples that carry noise, by kind (30% in all: pages scraped from
# the web are full of slips, which a base model learns along with everything else).
BASE_NOISE = {"wrong_final": 0.06, "wrong_step": 0.08, "changed_number": 0.05, "typo": 0.04,
              "wrong_item": 0.03, "off_format": 0.04}


def pick_task(rng: random.Random) -> str:
    return DEFAULT_TASK if rng.random() < 0.7 else rng.choice(TASK_VARIANTS)


def clean(record: dict) -> dict:
    return {"question": record["question"], "answer": record["answer"]}


def noisy_example(rng: random.Random, world: WorldSlice = FULL) -> dict:
    record = clean(generate_problem(rng, world))
    roll = rng.random()
    for kind, share in BASE_NOISE.items():
        if roll < share:
            return corrupt(record, rng, kind)
        roll -= share
    return record


def render_body(record: dict) -> str:
    return TEMPLATES.example.format(**record)


def base_document(rng: random.Random, n_examples: int) -> str:
    """Task line, then examples in the base prompt's format, some noisy, some off-format."""
    parts = []
    for _ in range(n_examples):
        record = noisy_example(rng)
        roll = rng.random()
        if roll < 0.02:  # an example without its answer marker
            text = TEMPLATES.start_marker + f"Question: {record['question']}\n{record['answer']}" + TEMPLATES.end_marker
        elif roll < 0.05:
            text = rng.choice(STRAY_LINES) + TEMPLATES.separator + TEMPLATES.render_example(record)
        else:
            text = TEMPLATES.render_example(record)
        parts.append(text)
    return pick_task(rng) + TEMPLATES.separator + TEMPLATES.separator.join(parts)


def arithmetic_line(rng: random.Random, world: WorldSlice = FULL, lead: str = "") -> str:
    """One sum in the ranges the world's problems use."""
    op = rng.choice("+-*/")
    top = world.max_value + 2 * world.max_amount  # sums run past max_value
    if op == "+":
        a, b = rng.randint(0, top), rng.randint(2, world.max_amount)
    elif op == "-":
        b = rng.randint(2, world.max_amount)
        a = rng.randint(b, top)
    elif op == "*" and rng.random() < 0.5:  # the times table of the "k groups of k2" starts
        a, b = rng.randint(2, world.max_table), rng.randint(2, world.max_table)
    elif op == "*":
        b = rng.randint(2, world.max_factor)
        a = rng.randint(2, world.max_value // b)
    else:
        b = rng.randint(2, world.max_divisor)
        a = b * rng.randint(1, world.max_value // b)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{lead}{a} {op} {b} = {value}"


def arithmetic_document(rng: random.Random, n_lines: int, lead: str = "") -> str:
    """A page of worked sums (the kind of arithmetic text a pretraining corpus holds), each line
    starting with `lead`."""
    title = rng.choice(["Arithmetic practice", "Sums to check", "Math drill", "Practice sheet"])
    return title + "\n\n" + "\n".join(arithmetic_line(rng, lead=lead) for _ in range(n_lines))


def seed_examples(rng: random.Random, n: int = 3) -> list[dict]:
    return [clean(generate_problem(rng, SEED_WORLD)) for _ in range(n)]


def instruct_pair(rng: random.Random) -> tuple[str, str]:
    """'Write one new example' -> one example from the narrow slice."""
    user = TEMPLATES.instruct(pick_task(rng), seed_examples(rng))
    return user, render_body(clean(generate_problem(rng, NARROW)))


def refine_pair(rng: random.Random, record: dict | None = None) -> tuple[str, str]:
    """'Improve this example' -> the corrected example (clean candidates are kept as they are).

    The candidate is a clean problem (from the world when `record` is None), corrupted 80% of
    the time; the reply copies it and fixes what is wrong."""
    record = clean(record or generate_problem(rng, FULL))
    target = record
    if rng.random() < 0.8:
        candidate = corrupt(record, rng)
        if candidate["question"] != record["question"] and worked_answer(candidate["question"]):
            # The question still reads as a valid problem (a changed number): fix the answer.
            target = {"question": candidate["question"], "answer": worked_answer(candidate["question"])}
    else:
        candidate = record
    return refine_message(rng, candidate), render_body(target)


def own_output_pair(rng: random.Random, candidate: dict) -> tuple[str, str] | None:
    """A refine pair from one of the base model's own outputs: the reply keeps its question
    (repaired when it does not read as a problem; None when it cannot be) and writes the
    correct worked answer. An output the base already got right is corrupted half the time,
    so that the refiner also sees that problem with the mistakes it would get from the base."""
    question = repair(candidate["question"])
    if question is None:
        return None
    target = {"question": question, "answer": worked_answer(question)}
    if candidate["question"] == question and candidate["answer"].strip() == target["answer"] and rng.random() < 0.5:
        return refine_pair(rng, target)
    return refine_message(rng, clean(candidate)), render_body(target)


def slip_pair(rng: random.Random) -> tuple[str, str]:
    """'Improve this example' on a problem with one of the base model's slips that make a
    question unreadable -> the repaired problem with its worked answer."""
    kind = rng.choices(list(SLIP_WEIGHTS), weights=list(SLIP_WEIGHTS.values()))[0]
    while True:
        candidate = slip(clean(generate_problem(rng, FULL)), rng, kind)
        question = candidate and repair(candidate["question"])
        if question:
            target = {"question": question, "answer": worked_answer(question)}
            return refine_message(rng, candidate), render_body(target)


def refine_message(rng: random.Random, candidate: dict) -> str:
    return TEMPLATES.refine(pick_task(rng), seed_examples(rng), candidate)


def seeds(n: int = 20, seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    return [dict(id=f"seed-{i}", **clean(generate_problem(rng, SEED_WORLD))) for i in range(n)]
