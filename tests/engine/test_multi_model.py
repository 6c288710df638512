"""Several named models in one engine: shared KV pools, per-model prefix caching, fair interleaving."""

import random

import pytest

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.errors import InvalidRequestError
from bare_engine.testing import make_model_dir

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = make_model_dir(tmp_path_factory.mktemp("base"), "llama", seed=1)
    instruct = make_model_dir(tmp_path_factory.mktemp("instruct"), "llama", seed=2)
    return base, instruct


@pytest.fixture(scope="module")
def other_shape(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("qwen3"), "qwen3")


def prompts(n, seed):
    rng = random.Random(seed)
    return [[rng.randrange(3, 480) for _ in range(rng.randrange(2, 50))] for _ in range(n)]


def drive(engine, requests):
    for rid, model, prompt, params in requests:
        engine.add_request(rid, prompt, params, model=model)
    done, order = {}, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
            order.append(out.request_id)
    return done, order


def test_same_shape_models_share_one_pool_and_match_single_model_runs(pair):
    base, instruct = pair
    engine = LLMEngine({"base": base, "instruct": instruct}, EngineConfig(num_kv_blocks=12, max_model_len=128))
    pools = engine.scheduler.pools
    assert pools["base"] is pools["instruct"]
    ps = prompts(6, 0)
    reqs = [(f"{m}{i}", m, p, GREEDY) for i, p in enumerate(ps) for m in ("base", "instruct")]
    done, _ = drive(engine, reqs)
    for m, path in (("base", base), ("instruct", instruct)):
        alone = LLM(path).generate(ps, GREEDY, use_tqdm=False)
        assert [done[f"{m}{i}"].outputs[0].token_ids for i in range(len(ps))] == [o.outputs[0].token_ids for o in alone]
        assert all(done[f"{m}{i}"].model == m for i in range(len(ps)))
    assert pools["base"].num_free_blocks == pools["base"].num_blocks


def test_different_shapes_split_the_budget(pair, other_shape):
    engine = LLMEngine({"base": pair[0], "instruct": other_shape}, EngineConfig(num_kv_blocks=200, kv_split_ratio=0.7))
    pools = engine.scheduler.pools
    assert pools["base"] is not pools["instruct"]
    assert (pools["base"].num_blocks, pools["instruct"].num_blocks) == (140, 60)
    done, _ = drive(engine, [("a", "base", [5, 6, 7], GREEDY), ("b", "instruct", [5, 6, 7], GREEDY)])
    assert set(done) == {"a", "b"}


def test_prefix_cache_never_matches_across_models(pair):
    engine = LLMEngine({"base": pair[0], "instruct": pair[1]}, EngineConfig(block_size=16))
    prompt = list(range(3, 60))
    drive(engine, [("a", "base", prompt, GREEDY)])
    pool = engine.scheduler.pools["base"]
    hits = pool.num_hit_blocks
    drive(engine, [("b", "instruct", prompt, GREEDY)])
    assert pool.num_hit_blocks == hits
    drive(engine, [("c", "base", prompt, GREEDY)])
    assert pool.num_hit_blocks == hits + 3


def test_neither_model_starves(pair):
    engine = LLMEngine({"base": pair[0], "instruct": pair[1]}, EngineConfig(max_num_seqs=4))
    long = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for i, p in enumerate(prompts(16, 1)):
        engine.add_request(f"b{i}", p, long, model="base")
    engine.add_request("i0", [5, 6, 7], GREEDY, model="instruct")
    stepped, finished = [], []
    while "i0" not in finished:
        before = {m: s.steps for m, s in engine.stats.items()}
        finished += [o.request_id for o in engine.step()]
        stepped.append(next(m for m, s in engine.stats.items() if s.steps != before[m]))
    # Base has the bigger batch and goes first, but never more than max_skipped steps in a row.
    longest_base_run = max(len(run) for run in "".join("b" if m == "base" else " " for m in stepped).split(" "))
    assert longest_base_run <= engine.policy.max_skipped
    assert stepped.count("instruct") == GREEDY.max_tokens  # one prefill+sample, then one decode per token
    assert len(finished) < 16  # the instruct request did not wait for the base queue to drain


def test_tiny_shared_pool_never_deadlocks(pair):
    # The pool holds one max-length sequence; both models want all of it.
    engine = LLMEngine(
        {"base": pair[0], "instruct": pair[1]},
        EngineConfig(num_kv_blocks=8, block_size=16, max_model_len=128, max_num_seqs=8),
    )
    long = SamplingParams(temperature=0.0, max_tokens=70, ignore_eos=True)
    ps = prompts(5, 3)
    reqs = [(f"{m}{i}", m, p, long) for i, p in enumerate(ps) for m in ("base", "instruct")]
    done, _ = drive(engine, reqs)
    assert sorted(done) == sorted(r[0] for r in reqs)
    assert engine.scheduler.num_preemptions > 0
    alone = LLM(pair[1]).generate(ps, long, use_tqdm=False)
    assert [done[f"instruct{i}"].outputs[0].token_ids for i in range(len(ps))] == [o.outputs[0].token_ids for o in alone]


def test_requests_must_name_a_loaded_model(pair):
    engine = LLMEngine({"base": pair[0], "instruct": pair[1]}, EngineConfig())
    with pytest.raises(InvalidRequestError, match="name one"):
        engine.add_request("x", [5, 6], GREEDY)
    with pytest.raises(InvalidRequestError, match="unknown model 'judge'"):
        engine.add_request("x", [5, 6], GREEDY, model="judge")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_one_checkpoint_under_two_names_shares_a_runner_and_its_steps(pair, async_scheduling):
    """BARE with one model as base and instruct: one copy of the weights, one queue, steps that mix
    both names' sequences, and the same tokens as two separate runners give."""
    base = pair[0]
    sampled = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=16, ignore_eos=True, seed=5)
    # Different prompts per name: prompt token counts then do not depend on prefix-cache hits.
    reqs = [(f"{m}{i}", m, p, GREEDY if i % 2 else sampled) for m, seed in (("base", 3), ("instruct", 4))
            for i, p in enumerate(prompts(6, seed))]
    results = {}
    for share in (True, False):
        config = EngineConfig(max_model_len=128, share_identical_models=share, async_scheduling=async_scheduling)
        engine = LLMEngine({"base": base, "instruct": base}, config)
        assert (engine.runners["base"] is engine.runners["instruct"]) == share
        assert (list(engine.scheduler.pools) == ["base"]) == share
        done, _ = drive(engine, reqs)
        assert all(done[rid].model == model for rid, model, _, _ in reqs)
        results[share] = {rid: out.outputs[0].token_ids for rid, out in done.items()}
        stats = engine.stats
        for m in ("base", "instruct"):
            assert stats[m].generated_tokens >= sum(len(results[share][rid]) for rid, model, _, _ in reqs if model == m)
            assert stats[m].prompt_tokens == sum(len(p) for _, model, p, _ in reqs if model == m)
        if share:  # mixed steps: fewer forward passes than the two names' steps together
            assert engine.runners["base"].stats.steps < stats["base"].steps + stats["instruct"].steps
    assert results[True] == results[False]


def test_names_with_different_checkpoints_or_sharing_off_keep_their_own_runners(pair):
    engine = LLMEngine({"base": pair[0], "instruct": pair[1]}, EngineConfig(max_model_len=128))
    assert engine.runners["base"] is not engine.runners["instruct"]
    assert engine.stats["base"] is not engine.stats["instruct"]
