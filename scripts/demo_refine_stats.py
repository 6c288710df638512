"""What BARE's refiner did to each base candidate in a demo `bare.jsonl`, and why the failures fail.

    python scripts/demo_refine_stats.py runs/demo/bare.jsonl

Candidates fall in four groups: correct, readable but wrongly answered, unreadable but mendable
by `repair`, and unreadable (the world cannot parse the question). Failures are sorted into copy loops (a
sentence of the question written twice), unreadable questions, repeated answer steps, and
wrong arithmetic.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from bare_engine.demo.repair import repair
from bare_engine.demo.world import _split_sentences, check, worked_answer


def candidate_group(candidate: dict | None) -> str:
    if candidate and check(candidate):
        return "correct"
    if candidate and worked_answer(candidate["question"]):
        return "readable_wrong"
    if candidate and repair(candidate["question"]):
        return "unreadable_repairable"
    return "unreadable"


def failure_kind(fields: dict | None) -> str:
    if not fields:
        return "dropped"
    sentences = _split_sentences(fields["question"])
    if len(set(sentences)) < len(sentences):
        return "question_loop"
    if worked_answer(fields["question"]) is None:
        return "question_unreadable"
    steps = [line.split(", so")[0] for line in fields["answer"].split("\n")]
    return "answer_loop" if len(set(steps)) < len(steps) else "answer_wrong"


def stats(records: list[dict]) -> dict:
    groups, passed, same_question, failures = Counter(), Counter(), Counter(), Counter()
    for r in records:
        candidate, fields = r["base"]["fields"], r.get("fields")
        group = candidate_group(candidate)
        groups[group] += 1
        if fields and check(fields):
            passed[group] += 1
            same_question[group] += bool(candidate) and fields["question"] == candidate["question"]
        else:
            failures[failure_kind(fields)] += 1
    return {
        "records": len(records),
        "pass_rate": sum(passed.values()) / max(1, len(records)),
        "candidates": {g: {"count": n, "pass": passed[g], "same_question": same_question[g]} for g, n in groups.items()},
        "failures": dict(failures),
    }


def main(argv: list[str]) -> None:
    for path in argv:
        with open(path, encoding="utf-8") as f:
            print(path, json.dumps(stats([json.loads(line) for line in f]), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
