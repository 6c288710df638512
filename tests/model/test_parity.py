"""Greedy outputs of the engine equal Hugging Face transformers' on the same weights."""


import pytest
from parity import GREEDY, PROMPTS, assert_greedy_parity, random_prompts

from bare_engine import LLM
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    cache = {}

    def get(arch, **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_model_dir(tmp_path_factory.mktemp(arch), arch, **kw)
        return cache[key]

    return get


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
