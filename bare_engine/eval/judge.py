"""Quality as the indistinguishability rate (IR) of the BARE paper.

A judge model sees k examples in random order, one synthetic and k-1 real, and names the one of
lower quality; IR is the share of trials where it does not name the synthetic one (chance:
(k-1)/k). Everything but `run_judge` is a pure function so it can be tested with a forced judge.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from bare_engine.errors import ConfigError

DEFAULT_K = 4
_NUMBER = re.compile(r"\d+")
_LEADING_NUMBER = re.compile(r"^\W*(?:example\s*)?(\d+)\b", re.IGNORECASE)


@dataclass
class Trial:
    candidates: list[str]  # k texts in the order shown to the judge
    synthetic_index: int  # 0-based position of the synthetic example

    @property
    def k(self) -> int:
        return len(self.candidates)


def build_trials(synthetic: list[str], reference: list[str], k: int = DEFAULT_K, seed: int = 0) -> list[Trial]:
    """One trial per synthetic text: k-1 distinct real texts and the synthetic one, shuffled."""
    if k < 2:
        raise ConfigError(f"judge k must be at least 2, got {k}")
    if len(reference) < k - 1:
        raise ConfigError(f"the reference set has {len(reference)} records; the judge needs at least k-1 = {k - 1}")
    rng = random.Random(seed)
    trials = []
    for text in synthetic:
        candidates = rng.sample(reference, k - 1)
        position = rng.randrange(k)
        candidates.insert(position, text)
        trials.append(Trial(candidates, position))
    return trials


def judge_prompt(trial: Trial, task: str = "") -> str:
    shown = "\n\n".join(f"Example {i + 1}:\n{text}" for i, text in enumerate(trial.candidates))
    intro = f"Task: {task}\n\n" if task else ""
    return (
        f"{intro}Here are {trial.k} examples for this task. All but one come from a high-quality dataset; "
        f"exactly one is of lower quality.\n\n{shown}\n\n"
        f"Which example is of lower quality? Answer with its number (1-{trial.k}) only."
    )


def parse_choice(text: str, k: int) -> int | None:
    """The 0-based position the judge named, or None when its answer names no single example.

    A leading number ("3", "Example 3: ...") wins; otherwise the answer must mention exactly one
    distinct number in 1..k. Anything else is a parse failure, never a guess.
    """
    lead = _LEADING_NUMBER.match(text)
    if lead:
        choice = int(lead.group(1))
        return choice - 1 if 1 <= choice <= k else None
    numbers = {int(m) for m in _NUMBER.findall(text) if 1 <= int(m) <= k}
    return numbers.pop() - 1 if len(numbers) == 1 else None


@dataclass
class JudgeResult:
    trials: int
    parsed: int
    picked_synthetic: int

    @property
    def parse_failures(self) -> int:
        return self.trials - self.parsed

    @property
    def ir(self) -> float | None:
        """Share of parsed trials where the judge did not pick the synthetic example."""
        return 1.0 - self.picked_synthetic / self.parsed if self.parsed else None

    def to_json(self) -> dict:
        return {"ir": self.ir, "trials": self.trials, "parsed": self.parsed,
                "parse_failures": self.parse_failures, "picked_synthetic": self.picked_synthetic}


def indistinguishability(trials: list[Trial], choices: list[int | None]) -> JudgeResult:
    parsed = [(t, c) for t, c in zip(trials, choices, strict=True) if c is not None]
    return JudgeResult(len(trials), len(parsed), sum(c == t.synthetic_index for t, c in parsed))


def chat_prompt_ids(tokenizer, prompt: str) -> list[int] | str:
    """Token ids of the prompt as a user chat turn, or the plain prompt without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
    )
    if hasattr(ids, "keys"):  # transformers versions that return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def run_judge(engine, trials: list[Trial], task: str = "", model: str | None = None,
              max_tokens: int = 16, seed: int = 0) -> tuple[JudgeResult, list[str]]:
    """Ask the engine's (instruct) model to judge every trial, greedily; returns IR and raw answers."""
    from bare_engine.sampling_params import SamplingParams

    tokenizer = engine.tokenizer(model or engine.model_names[0])
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)
    for i, trial in enumerate(trials):
        engine.add_request(f"judge-{i}", chat_prompt_ids(tokenizer, judge_prompt(trial, task)), params, model=model)
    answers: dict[str, str] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            answers[output.request_id] = output.outputs[0].text
    texts = [answers.get(f"judge-{i}", "") for i in range(len(trials))]
    choices = [parse_choice(text, trial.k) for text, trial in zip(texts, trials, strict=True)]
    return indistinguishability(trials, choices), texts
