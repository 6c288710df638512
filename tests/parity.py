"""Greedy parity with transformers: the prompts, the reference tokens and the check, shared by the model
and tensor-parallel tests."""

import random

import torch

from bare_engine import SamplingParams
from bare_engine.testing import hf_greedy

NEW_TOKENS = 32
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def random_prompts(lengths, vocab=480, seed=0, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


PROMPTS = random_prompts([1, 5, 17, 33, 70])


_hf_cache = {}


def reference(model_dir, prompts):
    key = (str(model_dir), tuple(map(tuple, prompts)))
    if key not in _hf_cache:
        _hf_cache[key] = hf_greedy(model_dir, prompts, NEW_TOKENS)
    return _hf_cache[key]


def top_k_ids(model_dir, ids, k=5):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return set(logits.topk(k).indices.tolist())


def assert_greedy_parity(model_dir, prompts, outputs):
    """Identical tokens, or at the first divergence (near-tied logits) each token is in transformers' top-5."""
    expected = reference(model_dir, prompts)
    for prompt, out, exp in zip(prompts, outputs, expected):
        got = out.outputs[0].token_ids
        assert len(got) == NEW_TOKENS
        if got == exp:
            continue
        i = next(i for i, (a, b) in enumerate(zip(got, exp)) if a != b)
        top5 = top_k_ids(model_dir, prompt + exp[:i])
        assert got[i] in top5 and exp[i] in top5, f"diverged at token {i}: engine {got[i]} vs transformers {exp[i]}"
