import random

import pytest

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.testing import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama")


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 480) for _ in range(rng.randrange(1, 60))] for _ in range(n)]


def run_all(engine, requests):
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id not in done, "request finished twice"
            done[out.request_id] = out
    return done


def test_no_request_lost_or_duplicated_under_preemption(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(num_kv_blocks=8, block_size=16, max_num_seqs=16, max_model_len=128))
    reqs = [(f"r{i}", p, SamplingParams(temperature=0.0, max_tokens=20 + i, ignore_eos=True)) for i, p in enumerate(prompts(12))]
    done = run_all(engine, reqs)
    assert sorted(done) == sorted(r[0] for r in reqs)
    assert engine.scheduler.num_preemptions > 0
    for rid, _, params in reqs:
        assert len(done[rid].outputs[0].token_ids) == params.max_tokens
    pool = engine.scheduler.pools["default"]
    assert pool.num_free_blocks == pool.num_blocks


def test_greedy_outputs_independent_of_arrival_order(model_dir):
    ps = prompts(8, seed=1)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    forward = LLM(model_dir, max_num_seqs=3, max_num_batched_tokens=32).generate(ps, params, use_tqdm=False)
    backward = LLM(model_dir, max_num_seqs=3, max_num_batched_tokens=32).generate(ps[::-1], params, use_tqdm=False)[::-1]
    assert [o.outputs[0].token_ids for o in forward] == [o.outputs[0].token_ids for o in backward]


def test_requests_join_between_steps(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(max_num_seqs=8))
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    engine.add_request("a", [5, 6, 7], params)
    engine.step()
    engine.step()
    engine.add_request("b", [8, 9], params)
    batch = engine.scheduler.schedule("default")
    assert {s.request_id for s in batch.seqs} == {"a", "b"}  # decode of a and prefill of b in one step


def test_preempted_request_resumes_before_newer(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(num_kv_blocks=8, block_size=16, max_num_seqs=16, max_model_len=128))
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"old{i}", list(range(3, 60)), params)
    while engine.scheduler.num_preemptions == 0:
        engine.step()
    engine.add_request("new", list(range(3, 20)), params)
    waiting = engine.scheduler.waiting["default"]
    assert waiting[-1].request_id == "new" and waiting[0].request_id.startswith("old")


def test_abort_frees_blocks(model_dir):
    engine = LLMEngine(model_dir, EngineConfig())
    engine.add_request("a", list(range(3, 40)), SamplingParams(max_tokens=50, temperature=0.0))
    engine.step()
    engine.abort_request("a")
    assert not engine.has_unfinished_requests()
    pool = engine.scheduler.pools["default"]
    assert pool.num_free_blocks == pool.num_blocks


@pytest.mark.parametrize("budget", [2048, 40])
def test_identical_prompts_admitted_together_compute_their_blocks_once(model_dir, budget):
    """A prompt's blocks enter the prefix cache when their computation is scheduled, so a copy of
    the prompt admitted later in the same step reads them as that step writes them; its output is
    the one the prompt gets alone. With a small budget the first prompt arrives in chunks and each
    copy joins as soon as the budget has room, hitting every block scheduled so far."""
    prompt = prompts(1, seed=7)[0] * 3 + [5] * 11  # 74 tokens: 4 full blocks and a tail
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = LLM(model_dir, block_size=16).generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    engine = LLMEngine(model_dir, EngineConfig(block_size=16, max_num_batched_tokens=budget))
    for i in range(4):
        engine.add_request(f"r{i}", prompt, params)
    computed = 0
    done = {}
    while engine.has_unfinished_requests():
        batch = engine.scheduler.schedule("default")
        computed += sum(n for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens < len(prompt))
        for out in engine.steps.run_batch(batch):
            done[out.request_id] = out.outputs[0].token_ids
    full_blocks = (len(prompt) - 1) // 16
    copies_compute = len(prompt) - full_blocks * 16
    assert computed <= len(prompt) + 3 * copies_compute + 3 * 16  # not 4 whole prefills
    assert all(tokens == alone for tokens in done.values()) and len(done) == 4
