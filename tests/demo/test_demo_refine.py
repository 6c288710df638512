"""End to end: the shipped instruct model, run by the pipeline's refine mode, fixes corrupted
problems (it copies each candidate and recomputes what is wrong)."""

import json
import random
import re

import pytest

from bare_engine.demo.noise import CORRUPTIONS, corrupt
from bare_engine.demo.world import check, generate_problem
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline

N = 24


def corrupted_problems() -> list[tuple[dict, dict]]:
    """(clean, corrupted) pairs, every kind of corruption in turn."""
    rng = random.Random(16)
    kinds = sorted(CORRUPTIONS)
    pairs = []
    for i in range(N):
        clean = {k: v for k, v in generate_problem(rng).items() if k != "final"}
        pairs.append((clean, corrupt(clean, rng, kinds[i % len(kinds)])))
    return pairs


# The acceptance test for the copy-and-fix half of issue 16. The shipped pair fixes 11 of the 21
# (its BARE pass rate is 2.2x base's): where it fails, the refiner's single-token induction head
# resumes the copy at the wrong sentence (one skipped or written twice), or gets a sum
# wrong. Strict: once a pair passes, drop it.
@pytest.mark.xfail(strict=True, reason="issue 16: the shipped refiner fixes 11 of 21 (copy loops, wrong sums)")
def test_shipped_instruct_model_fixes_corrupted_problems(tmp_path):
    pairs = corrupted_problems()
    broken = {i for i, (_, noisy) in enumerate(pairs) if not check(noisy)}
    assert len(broken) >= 0.8 * N  # a few off-format answers still end in the right '#### N'
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps(noisy) + "\n" for _, noisy in pairs), encoding="utf-8")
    cfg = load_config(None, {
        "mode": "refine", "candidates": str(cands), "num": N, "out": str(tmp_path / "out.jsonl"),
        "progress": False, "engine.device": "cpu", "sampling.refine.temperature": 0.0,
        "sampling.refine.max_tokens": 300,
    })
    run_pipeline(cfg, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # fixed: passes the checker and is still the candidate's problem (same protagonist, items
    # and first sentence up to its numbers), not a new one
    fixed = [r for r in records if r["input"]["index"] in broken and check(r["fields"])
             and _first_sentence(r["fields"]["question"]) == _first_sentence(pairs[r["input"]["index"]][0]["question"])]
    print(f"\nfixed {len(fixed)} of {len(broken)} broken candidates")
    assert len(fixed) >= 0.6 * len(broken)


def _first_sentence(question: str) -> str:
    return re.sub(r"\d+", "#", question.split(". ")[0])
