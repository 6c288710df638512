"""A small fake of the engine API (notes/engine_api.md) for pipeline tests, and checks of the fake.

The fake follows the contract the pipeline relies on: a request's output depends only on
(model, prompt, seed); step() runs one model and returns the requests that finished;
completions arrive out of order; max_num_seqs bounds the running requests.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bare_engine.errors import PromptTooLongError
from bare_engine.pipeline.config import load_config
from bare_engine.testing import make_tokenizer

SEEDS = [
    {"id": f"s{i}", "question": f"Tom has {i} apples and buys {i + 2} more. How many?", "answer": f"#### {2 * i + 2}"}
    for i in range(6)
]


@dataclass
class FakeStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0


@dataclass
class FakeCompletion:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str
    stop_reason: object = None
    logprobs: object = None
    cumulative_logprob: object = None


@dataclass
class FakeOutput:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]
    finished: bool = True


@dataclass
class _Request:
    rid: str
    model: str
    prompt_ids: list[int]
    pieces: list[str]
    finish_reason: str
    done: int = 0


def base_script(prompt: str, seed: int) -> str:
    """Base model: mostly well-formed candidates, some unparsable, some that run past max_tokens."""
    rng = random.Random(seed)
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    kind = rng.random()
    if kind < 0.15:
        return "I like trains " * 3 + "\n</example>"
    if kind < 0.25:
        return "Question: what now?\nAnswer:\n</example>"
    if kind < 0.3:
        return "Question: How long?\nAnswer: " + "very " * 200
    return f"Question: Sam has {a} pens and gets {b} more. How many?\nAnswer: #### {a + b}\n</example>\n\n<example>\nextra"


def instruct_script(prompt: str, seed: int) -> str:
    """Instruct model: refines the candidate in the prompt (keeps its question), or writes a new one."""
    rng = random.Random(seed)
    if rng.random() < 0.1:
        return "Sorry, I cannot help with that."
    if "Improve the following example" in prompt:
        tail = prompt.split("Improve the following example")[1]
        question = re.search(r"Question: (.*)", tail).group(1)
        return f"Question: Better: {question}\nAnswer: #### {rng.randint(0, 99)}"
    return f"Question: Mia has {rng.randint(1, 9)} cats. How many?\nAnswer: #### {rng.randint(0, 9)}"


def default_script(model: str, prompt: str, seed: int) -> str:
    return base_script(prompt, seed) if model == "base" else instruct_script(prompt, seed)


class FakeEngine:
    def __init__(self, models: dict[str, str], script=default_script, max_num_seqs: int = 4,
                 order_seed: int = 0, step_delay: float = 0.0, interrupt_after_steps: int | None = None,
                 max_prompt_tokens: int | None = None):
        self.model_names = sorted(models)
        self.script = script
        self.max_num_seqs = max_num_seqs
        self.rng = random.Random(order_seed)
        self.step_delay = step_delay
        self.interrupt_after_steps = interrupt_after_steps
        self.max_prompt_tokens = max_prompt_tokens
        self.stats = {m: FakeStats() for m in self.model_names}
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.events: list[tuple[str, str]] = []  # ("add" | "finish" | "abort", request id)
        self.num_steps = 0
        self._tok = make_tokenizer()

    def tokenizer(self, model: str):
        assert model in self.model_names
        return self._tok

    def add_request(self, request_id, prompt, params, model=None):
        if model is None:
            assert len(self.model_names) == 1
            model = self.model_names[0]
        assert model in self.model_names, model
        assert all(r.rid != request_id for r in self.waiting + self.running), f"duplicate {request_id}"
        assert params.seed is not None, "pipeline requests must be seeded"
        ids = list(prompt) if isinstance(prompt, list) else self._tok(prompt)["input_ids"]
        text = self._tok.decode(ids) if isinstance(prompt, list) else prompt
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise PromptTooLongError(f"prompt of {len(ids)} tokens does not fit")
        full, finish = self.script(model, text, params.seed), "stop"
        for stop in params.stop_strings:
            if stop in full:
                full = full[: full.index(stop)]
        pieces = [full[i:i + 3] for i in range(0, len(full), 3)]
        if params.max_tokens is not None and len(pieces) > params.max_tokens:
            pieces, finish = pieces[: params.max_tokens], "length"
        self.waiting.append(_Request(request_id, model, ids, pieces, finish))
        self.events.append(("add", request_id))

    def step(self):
        self.num_steps += 1
        if self.interrupt_after_steps is not None and self.num_steps > self.interrupt_after_steps:
            raise KeyboardInterrupt
        if self.step_delay:
            time.sleep(self.step_delay)
        while self.waiting and len(self.running) < self.max_num_seqs:
            self.running.append(self.waiting.pop(0))
        models = sorted({r.model for r in self.running})
        if not models:
            return []
        model = self.rng.choice(models)
        stats = self.stats[model]
        stats.steps += 1
        finished = []
        for req in [r for r in self.running if r.model == model]:
            if req.done == 0:
                stats.prompt_tokens += len(req.prompt_ids)
            req.done += self.rng.randint(1, 3)  # uneven progress: out-of-order completions
            if req.done >= len(req.pieces):
                stats.generated_tokens += len(req.pieces)
                self.running.remove(req)
                finished.append(self._output(req))
        return finished

    def _output(self, req: _Request) -> FakeOutput:
        self.events.append(("finish", req.rid))
        text = "".join(req.pieces)
        completion = FakeCompletion(0, list(range(len(req.pieces))), text, req.finish_reason)
        return FakeOutput(req.rid, req.model, req.prompt_ids, [completion])

    def abort_request(self, request_id):
        self.events.append(("abort", request_id))
        self.waiting = [r for r in self.waiting if r.rid != request_id]
        self.running = [r for r in self.running if r.rid != request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def num_unfinished_requests(self, model=None) -> int:
        return sum(1 for r in self.waiting + self.running if model in (None, r.model))


# ------------------------------------------------------------------ helpers for the pipeline tests


def make_fake_model(path: Path, chat_template: bool = True) -> Path:
    """A model folder the pipeline's checks accept (config.json + tokenizer), without weights."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    make_tokenizer(chat_template=chat_template).save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_setup(tmp_path: Path, **overrides):
    """A validated config over fake model folders and SEEDS; `overrides` are dotted keys."""
    models = tmp_path / "models"
    if not (models / "base").exists():
        make_fake_model(models / "base")
        make_fake_model(models / "instruct")
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        write_jsonl(seeds, SEEDS)
    values = {
        "base": str(models / "base"), "instruct": str(models / "instruct"), "seeds": str(seeds),
        "out": str(tmp_path / "out.jsonl"), "num": 12, "progress": False,
        "sampling.base.max_tokens": 60, "sampling.refine.max_tokens": 60, "sampling.instruct.max_tokens": 60,
    }
    values.update(overrides)
    return load_config(None, values)


def fake_factory(**engine_kwargs):
    """An engine_factory for run_pipeline; the engines it made are kept in `.engines`."""
    def factory(cfg):
        kwargs = {"max_num_seqs": cfg.engine.max_num_seqs, **engine_kwargs}
        engine = FakeEngine({name: cfg.model_path(name) for name in cfg.model_names}, **kwargs)
        factory.engines.append(engine)
        return engine

    factory.engines = []
    return factory


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------ checks of the fake itself


def test_fake_output_depends_only_on_prompt_and_seed():
    from bare_engine.sampling_params import SamplingParams

    def run(max_num_seqs, order_seed, extra):
        engine = FakeEngine({"base": "b"}, max_num_seqs=max_num_seqs, order_seed=order_seed)
        for i in range(extra):
            engine.add_request(f"x{i}", f"noise {i}", SamplingParams(seed=100 + i, max_tokens=50))
        engine.add_request("target", "prompt", SamplingParams(seed=7, max_tokens=50, stop=["\n</example>"]))
        outs = {}
        while engine.has_unfinished_requests():
            outs.update({o.request_id: o for o in engine.step()})
        return outs["target"].outputs[0].text

    texts = {run(m, o, e) for m, o, e in [(1, 0, 0), (4, 1, 5), (2, 3, 9)]}
    assert len(texts) == 1
    assert "</example>" not in texts.pop()


def test_fake_completes_out_of_order():
    from bare_engine.sampling_params import SamplingParams

    engine = FakeEngine({"base": "b"}, max_num_seqs=8)
    for i in range(8):
        engine.add_request(f"r{i}", "p", SamplingParams(seed=i, max_tokens=80))
    order = []
    while engine.has_unfinished_requests():
        order += [o.request_id for o in engine.step()]
    assert sorted(order) == sorted(f"r{i}" for i in range(8)) and order != sorted(order)
