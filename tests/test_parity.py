"""Greedy outputs of the engine equal Hugging Face transformers' on the same weights."""

import random

import pytest
import torch

from bare_engine import LLM, SamplingParams
from tiny_models import hf_greedy, make_model_dir

NEW_TOKENS = 32
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def random_prompts(lengths, vocab=480, seed=0, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


PROMPTS = random_prompts([1, 5, 17, 33, 70])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    cache = {}

    def get(arch, **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_model_dir(tmp_path_factory.mktemp(arch), arch, **kw)
        return cache[key]

    return get


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


@pytest.mark.parametrize("arch", ["llama", "llama3", "qwen2", "qwen3", "mistral"])
def test_architectures_match_transformers(model_dirs, arch):
    model_dir = model_dirs(arch)
    outputs = LLM(model_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    assert_greedy_parity(model_dir, PROMPTS, outputs)


def test_sharded_checkpoint_and_tied_embeddings(model_dirs):
    sharded = model_dirs("llama", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert_greedy_parity(sharded, PROMPTS, LLM(sharded).generate(PROMPTS, GREEDY, use_tqdm=False))
    tied = model_dirs("qwen2", tie_word_embeddings=True)
    assert_greedy_parity(tied, PROMPTS, LLM(tied).generate(PROMPTS, GREEDY, use_tqdm=False))


def test_gqa_head_ratios(model_dirs):
    for kv_heads in (1, 4):
        model_dir = model_dirs("llama", num_key_value_heads=kv_heads)
        assert_greedy_parity(model_dir, PROMPTS, LLM(model_dir).generate(PROMPTS, GREEDY, use_tqdm=False))


def test_parity_under_preemption(model_dirs):
    model_dir = model_dirs("llama")
    # 8 blocks of 16 tokens: the longest sequence alone needs 7, so the batch must preempt.
    llm = LLM(model_dir, num_kv_blocks=8, block_size=16, max_num_seqs=8, max_model_len=128)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    assert_greedy_parity(model_dir, PROMPTS, outputs)
    pool = llm.engine.scheduler.pools["default"]
    assert pool.num_free_blocks == pool.num_blocks


def test_parity_with_prefix_cache_hits(model_dirs):
    model_dir = model_dirs("qwen3")
    shared = random_prompts([40], seed=7)[0]
    prompts = random_prompts([3, 9, 20], seed=8, prefix=shared)
    llm = LLM(model_dir, block_size=16)
    first = llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = llm.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert llm.engine.scheduler.pools["default"].num_hit_blocks >= 2 * 2  # two full shared blocks each
    assert_greedy_parity(model_dir, prompts, first + rest)


def test_parity_with_chunked_prefill(model_dirs):
    model_dir = model_dirs("llama3")
    llm = LLM(model_dir, max_num_batched_tokens=8)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert_greedy_parity(model_dir, PROMPTS, outputs)
