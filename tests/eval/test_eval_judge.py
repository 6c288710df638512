from dataclasses import dataclass

import pytest

from bare_engine.errors import ConfigError
from bare_engine.eval.judge import (
    Trial,
    build_trials,
    chat_prompt_ids,
    indistinguishability,
    judge_prompt,
    parse_choice,
    run_judge,
)
from bare_engine.testing import make_tokenizer

SYNTHETIC = [f"synthetic {i}" for i in range(40)]
REAL = [f"real {i}" for i in range(10)]


def test_trials_hold_one_synthetic_and_distinct_reals_and_are_seeded():
    trials = build_trials(SYNTHETIC, REAL, k=4, seed=7)
    assert len(trials) == len(SYNTHETIC)
    for text, trial in zip(SYNTHETIC, trials):
        assert trial.k == 4 and trial.candidates[trial.synthetic_index] == text
        reals = [c for i, c in enumerate(trial.candidates) if i != trial.synthetic_index]
        assert len(set(reals)) == 3 and set(reals) <= set(REAL)
    assert build_trials(SYNTHETIC, REAL, k=4, seed=7) == trials
    assert build_trials(SYNTHETIC, REAL, k=4, seed=8) != trials
    assert len({t.synthetic_index for t in trials}) == 4  # the synthetic appears in every position


def test_bad_trial_inputs():
    with pytest.raises(ConfigError, match="at least k-1 = 3"):
        build_trials(SYNTHETIC, REAL[:2], k=4)
    with pytest.raises(ConfigError, match="at least 2"):
        build_trials(SYNTHETIC, REAL, k=1)


@pytest.mark.parametrize("forced", [0, 1, 2, 3])
def test_forced_judge_ir_is_share_not_picking_synthetic(forced):
    trials = build_trials(SYNTHETIC, REAL, k=4, seed=0)
    answers = [f"{forced + 1}" for _ in trials]
    result = indistinguishability(trials, [parse_choice(a, 4) for a in answers])
    expected = sum(t.synthetic_index != forced for t in trials) / len(trials)
    assert result.ir == pytest.approx(expected) and result.parse_failures == 0


def test_parse_failures_are_counted_not_guessed():
    trials = [Trial(["a", "b"], 0), Trial(["a", "b"], 1), Trial(["a", "b"], 1)]
    result = indistinguishability(trials, [0, None, 0])
    assert (result.trials, result.parsed, result.parse_failures, result.picked_synthetic) == (3, 2, 1, 1)
    assert result.ir == pytest.approx(0.5)
    assert indistinguishability(trials[:1], [None]).ir is None


@pytest.mark.parametrize(
    "text, choice",
    [("3", 2), ("Example 2", 1), ("**4**", 3), (" 1. It has an error", 0), ("The answer is 2.", 1),
     ("Example 2 is worse than example 3", 1), ("5", None), ("I think 1 or 2", None), ("none", None), ("", None)],
)
def test_parse_choice(text, choice):
    assert parse_choice(text, 4) == choice


def test_prompt_shows_every_candidate_numbered():
    prompt = judge_prompt(Trial(["alpha", "beta", "gamma"], 1), task="math")
    assert prompt.startswith("Task: math")
    assert prompt.index("Example 1:\nalpha") < prompt.index("Example 2:\nbeta") < prompt.index("Example 3:\ngamma")
    assert "(1-3)" in prompt


@dataclass
class _Completion:
    text: str


@dataclass
class _Output:
    request_id: str
    outputs: list


class ForcedJudgeEngine:
    """Follows the engine API contract; always answers `position` (1-based), a few requests per step."""

    model_names = ["judge"]

    def __init__(self, position: int):
        self.position = position
        self.pending = []
        self.tok = make_tokenizer()

    def tokenizer(self, model):
        assert model == "judge"
        return self.tok

    def add_request(self, request_id, prompt, params, model=None):
        assert params.temperature == 0.0 and isinstance(prompt, list)
        self.pending.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        done, self.pending = self.pending[:3], self.pending[3:]
        return [_Output(rid, [_Completion(f"Example {self.position}")]) for rid in done]


def test_run_judge_with_engine_contract():
    trials = build_trials(SYNTHETIC, REAL, k=4, seed=1)
    result, answers = run_judge(ForcedJudgeEngine(2), trials, task="t")
    assert answers == ["Example 2"] * len(trials)
    assert result.ir == pytest.approx(sum(t.synthetic_index != 1 for t in trials) / len(trials))


def test_chat_prompt_ids_renders_the_chat_template():
    tok = make_tokenizer()
    ids = chat_prompt_ids(tok, "hello")
    chat = [{"role": "user", "content": "hello"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "<|user|>hello<|end|><|assistant|>"
    assert chat_prompt_ids(make_tokenizer(chat_template=False), "hello") == "hello"
