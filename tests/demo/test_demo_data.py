"""The demo's training-data builders: every corruption, and the "improve this" pair built from
it, round-trips to a correct problem that keeps the candidate's content."""

import random
import sys
from pathlib import Path

import pytest

from bare_engine.demo.noise import CORRUPTIONS, corrupt
from bare_engine.demo.world import check, generate_problem, worked_answer
from bare_engine.pipeline.templates import Templates

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_data import own_output_pair, refine_pair  # noqa: E402

T = Templates()


def _candidate_and_reply(user: str, reply: str) -> tuple[dict, dict]:
    candidate = T.parse(user.rsplit(T.start_marker, 1)[1])
    return candidate, T.parse(reply)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corruption_then_fix_round_trips(kind):
    rng = random.Random(3)
    for _ in range(50):
        record = {k: v for k, v in generate_problem(rng).items() if k != "final"}
        noisy = corrupt(record, rng, kind)
        fixed_question = noisy["question"] if worked_answer(noisy["question"]) else record["question"]
        # the fix keeps a question that still reads as a problem (a changed number) and
        # restores one that does not (a typo, the wrong item); the answer is recomputed
        fixed = {"question": fixed_question, "answer": worked_answer(fixed_question)}
        assert check(fixed) and not (check(noisy) and kind != "typo" and kind != "off_format")
        assert fixed_question in (record["question"], noisy["question"])


def test_refine_pair_copies_the_candidate_and_fixes_it():
    rng = random.Random(4)
    kept = changed = 0
    for _ in range(200):
        record = {k: v for k, v in generate_problem(rng).items() if k != "final"}
        candidate, reply = _candidate_and_reply(*refine_pair(rng, record))
        assert check(reply)
        # the reply is the candidate with its errors fixed, never another problem
        assert reply["question"] in (candidate["question"], record["question"])
        kept += candidate == reply
        changed += candidate != reply
    assert kept > 20 and changed > 120  # 20% of candidates are clean and kept as they are


def test_own_output_pair_keeps_the_question_and_fixes_the_answer():
    rng = random.Random(5)
    record = {k: v for k, v in generate_problem(rng).items() if k != "final"}
    slip = {"question": record["question"], "answer": record["answer"].replace("####", "Then 1 + 1 = 3.\n####")}
    candidate, reply = _candidate_and_reply(*own_output_pair(rng, slip))
    assert candidate == slip and reply == record
    unreadable = {"question": "Mia has 3 apples. She juggles them. How many?", "answer": "#### 3"}
    assert own_output_pair(rng, unreadable) is None
    # a correct output is sometimes corrupted first; the reply is always the clean problem
    for _ in range(20):
        candidate, reply = _candidate_and_reply(*own_output_pair(rng, record))
        assert reply["question"] in (record["question"], candidate["question"]) and check(reply)


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_spaced_sum_pages_tokenize_like_the_worked_answers():
    # The refiner learns its sums from pages; a line's first operand must be the same token as
    # an answer's (" 1" after "has", not "1" after a newline) for that to carry over.
    from demo_data import arithmetic_document
    from transformers import AutoTokenizer

    from bare_engine.demo import INSTRUCT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(INSTRUCT_MODEL_DIR)
    rng = random.Random(6)
    for lead, carries_over in (("", False), (" ", True)):
        page = arithmetic_document(rng, 20, lead)
        for line in page.split("\n\n", 1)[1].split("\n"):
            assert line.startswith(lead) and line[len(lead)].isdigit()
            answer = tok(f"so she has {line.strip()}.").input_ids
            assert _contains(answer, tok(line).input_ids[:2]) == carries_over, (lead, line)


def test_refine_stats_groups_candidates_and_sorts_failures():
    from demo_refine_stats import stats

    rng = random.Random(7)
    good = {k: v for k, v in generate_problem(rng).items() if k != "final"}
    wrong = corrupt(good, rng, "wrong_final")
    first = good["question"].split(". ")[0]
    looped = {"question": first + ". " + good["question"], "answer": good["answer"]}
    records = [
        {"base": {"fields": good}, "fields": good},  # kept
        {"base": {"fields": wrong}, "fields": good},  # fixed, same question
        {"base": {"fields": wrong}, "fields": looped},  # copy loop
        {"base": {"fields": None}, "fields": None},  # nothing parsed
    ]
    out = stats(records)
    assert out["pass_rate"] == 0.5
    assert out["candidates"]["correct"] == {"count": 1, "pass": 1, "same_question": 1}
    assert out["candidates"]["readable_wrong"] == {"count": 2, "pass": 1, "same_question": 1}
    assert out["failures"] == {"question_loop": 1, "dropped": 1}
