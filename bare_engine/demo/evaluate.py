"""Measure the demo pair with plain transformers `generate`: parse rate, checker pass rate and
distinct-2 for base, instruct and BARE (base generates, instruct refines).

    python -m bare_engine.demo.evaluate [--n 50] [--models DIR]

This is the reference measurement of the shipped models, independent of the engine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bare_engine.demo import MODELS_DIR, load_seeds
from bare_engine.demo.world import check
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates


@dataclass
class Scores:
    n: int
    parse_rate: float
    pass_rate: float  # over all n samples (an unparsed sample fails)
    distinct_2: float  # over the parsed records' text
    unique_questions: int


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    return model.eval(), tok


def generate(model, tok, prompts: list[str], temperature: float, max_new_tokens: int, stop: str | None, seed: int):
    """One sampled continuation per prompt (batched, left-padded)."""
    torch.manual_seed(seed)
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            stop_strings=[stop] if stop else None, tokenizer=tok if stop else None,
        )
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(stop)[0] if stop else t for t in texts]


def chat(tok, user: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def sample_base(model, tok, seeds, n: int, seed: int = 0, temperature: float = 0.7) -> list[str]:
    t = Templates()
    prompt = t.base(DEFAULT_TASK, seeds)
    return generate(model, tok, [prompt] * n, temperature, 300, t.end_marker.strip(), seed)


def sample_instruct(model, tok, seeds, n: int, seed: int = 0, temperature: float = 0.7) -> list[str]:
    prompt = chat(tok, Templates().instruct(DEFAULT_TASK, seeds))
    return generate(model, tok, [prompt] * n, temperature, 300, None, seed)


def refine(model, tok, seeds, candidates: list[dict], seed: int = 0, temperature: float = 0.7) -> list[str]:
    prompts = [chat(tok, Templates().refine(DEFAULT_TASK, seeds, c)) for c in candidates]
    return generate(model, tok, prompts, temperature, 300, None, seed) if prompts else []


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over the whole set."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def score(texts: list[str], n: int | None = None) -> tuple[Scores, list[dict]]:
    parsed = [r for r in (Templates().parse(t) for t in texts) if r is not None]
    n = n or len(texts)
    return Scores(
        n=n, parse_rate=len(parsed) / n, pass_rate=sum(map(check, parsed)) / n,
        distinct_2=distinct_n([f"{r['question']} {r['answer']}" for r in parsed]),
        unique_questions=len({r["question"] for r in parsed}),
    ), parsed


def evaluate(models_dir: Path = MODELS_DIR, n: int = 50, seed: int = 0) -> dict[str, Scores]:
    torch.set_num_threads(2)
    seeds = [{"question": s["question"], "answer": s["answer"]} for s in load_seeds()[:3]]
    base, base_tok = load(models_dir / "base")
    inst, inst_tok = load(models_dir / "instruct")
    base_scores, candidates = score(sample_base(base, base_tok, seeds, n, seed))
    inst_scores, _ = score(sample_instruct(inst, inst_tok, seeds, n, seed))
    bare_scores, _ = score(refine(inst, inst_tok, seeds, candidates, seed), n)
    return {"base": base_scores, "instruct": inst_scores, "bare": bare_scores}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Measure the demo model pair.")
    parser.add_argument("--models", type=Path, default=MODELS_DIR)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, s in evaluate(args.models, args.n, args.seed).items():
        print(json.dumps({"mode": name, **asdict(s)}))


if __name__ == "__main__":
    main()
