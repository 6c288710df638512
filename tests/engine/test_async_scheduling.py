"""Overlapped steps (async_scheduling, bare_engine/engine/steps.py) give the synchronous engine's outputs.

On the CPU ``async_scheduling=True`` runs the overlapped code path (pending tokens, the device-side
gather of the previous step's tokens, one-step-late finishes) without the overlap itself.
Token ids, text, finish and stop reasons are compared exactly. Logprobs are compared exactly
where both runs have the same batches; elsewhere to float rounding: learning of a finish one step
late, the overlapped engine admits a waiting request a step later, and a float32 forward pass over
another batch composition rounds differently (the synchronous engine does the same across batch
sizes).
"""

import random

import pytest

from bare_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from bare_engine.engine.steps import OverlappedSteps
from bare_engine.errors import ConfigError, InvalidRequestError
from bare_engine.serve.engine_view import request_progress
from bare_engine.testing import hf_greedy, make_model_dir

ENGINE = dict(block_size=4, max_model_len=128, num_kv_blocks=96, max_num_seqs=4, max_num_batched_tokens=32)


def random_prompts(lengths, seed=0, vocab=480):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


PROMPTS = random_prompts([1, 5, 17, 33, 40, 9, 26])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("llama"), "llama")


def generate(model_dir, prompts, params, overlapped: bool, **engine):
    llm = LLM(model_dir, async_scheduling=overlapped, **{**ENGINE, **engine})
    assert llm.engine.async_scheduling is overlapped
    outputs = llm.generate(prompts, params, use_tqdm=False)
    check_released(llm.engine)
    return outputs, llm.engine


def check_released(engine: LLMEngine) -> None:
    """Nothing is left behind: every block free, every row free, no pending step."""
    for name, pool in engine.scheduler.pools.items():
        assert pool.num_free_blocks == pool.num_blocks, name
        assert not engine.scheduler.running[name] and not engine.scheduler.waiting[name]
    for runner in engine.runners.values():
        assert len(runner.input_batch.free_rows) == engine.config.max_num_seqs
    assert getattr(engine.steps, "pending", None) is None


def completions(outputs):
    return [[(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in o.outputs] for o in outputs]


def assert_same_logprobs(a, b, exact: bool) -> None:
    for out_a, out_b in zip(a, b):
        for ca, cb in zip(out_a.outputs, out_b.outputs):
            if ca.logprobs is None:
                assert cb.logprobs is None
                continue
            if exact:
                assert ca.logprobs == cb.logprobs and ca.cumulative_logprob == cb.cumulative_logprob
                continue
            assert [sorted(e) for e in ca.logprobs] == [sorted(e) for e in cb.logprobs]
            for ea, eb in zip(ca.logprobs, cb.logprobs):
                assert [ea[t] for t in sorted(ea)] == pytest.approx([eb[t] for t in sorted(eb)], abs=1e-5)
            assert ca.cumulative_logprob == pytest.approx(cb.cumulative_logprob, abs=1e-4)


def assert_same(model_dir, prompts, params, exact_logprobs=False, **engine):
    sync, sync_engine = generate(model_dir, prompts, params, False, **engine)
    overlapped, overlapped_engine = generate(model_dir, prompts, params, True, **engine)
    assert completions(overlapped) == completions(sync)
    assert_same_logprobs(sync, overlapped, exact_logprobs)
    if exact_logprobs:  # the same batches: a pending last token (by length) is not scheduled again
        assert overlapped_engine.stats["default"].steps == sync_engine.stats["default"].steps
    return sync, overlapped_engine


def test_option_defaults_to_cuda_only_and_is_validated(model_dir):
    import torch

    assert EngineConfig().resolve_async_scheduling(torch.device("cpu")) is False
    assert EngineConfig().resolve_async_scheduling(torch.device("cuda")) is True
    assert EngineConfig(async_scheduling=False).resolve_async_scheduling(torch.device("cuda")) is False
    assert LLM(model_dir, **ENGINE).engine.async_scheduling is False  # on the CPU by default
    with pytest.raises(ConfigError, match="async_scheduling must be true, false or null.*'yes'"):
        EngineConfig(async_scheduling="yes")


def test_greedy_with_logprobs_is_bit_identical_when_batches_match(model_dir):
    # Every request fits at once and ends by length: both engines run the same batches.
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    sync, _ = assert_same(model_dir, PROMPTS[:4], params, exact_logprobs=True, max_num_batched_tokens=128)
    assert all(len(o.outputs[0].token_ids) == 12 for o in sync)


def test_seeded_sampling_with_per_request_params_and_n(model_dir):
    rng = random.Random(1)
    params = [
        SamplingParams(n=1 + i % 3, seed=100 + i, temperature=rng.uniform(0.5, 1.2), top_p=rng.choice([1.0, 0.9]),
                       top_k=rng.choice([-1, 40]), min_p=rng.choice([0.0, 0.05]), max_tokens=6 + 2 * i,
                       presence_penalty=rng.choice([0.0, 0.5]), frequency_penalty=rng.choice([0.0, 0.3]),
                       repetition_penalty=rng.choice([1.0, 1.2]), logprobs=rng.choice([None, 0, 2]),
                       logit_bias={7: 2.0} if i == 2 else None,
                       allowed_token_ids=list(range(3, 200)) if i == 4 else None)
        for i in range(len(PROMPTS))
    ]
    sync, _ = assert_same(model_dir, PROMPTS, params)
    assert sum(len(o.outputs) for o in sync) > len(PROMPTS)  # n > 1 really ran
    assert all(t < 200 for t in sync[4].outputs[0].token_ids)


def test_stop_strings_stop_tokens_eos_and_max_tokens(model_dir):
    # Stops taken from a plain run, so that they really fire.
    plain, engine = generate(model_dir, PROMPTS, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True), False)
    eos = engine.tokenizer().eos_token_id
    params = []
    for i, out in enumerate(plain):
        c = out.outputs[0]
        kinds = [
            dict(stop=[c.text[6:9]]) if len(c.text) > 9 else {},
            dict(stop=c.text[4:6], include_stop_str_in_output=True) if len(c.text) > 6 else {},
            dict(stop_token_ids=[c.token_ids[5]]),
            dict(logit_bias={eos: 4.0}, temperature=0.7, seed=i),  # ends on EOS early (not ignore_eos)
            dict(max_tokens=3 + i),
        ]
        params.append(SamplingParams(**{"temperature": 0.0, "max_tokens": 20, **kinds[i % len(kinds)]}))
    sync, _ = assert_same(model_dir, PROMPTS, params)
    reasons = {(o.outputs[0].finish_reason, type(o.outputs[0].stop_reason).__name__) for o in sync}
    assert {("stop", "str"), ("stop", "int"), ("stop", "NoneType"), ("length", "NoneType")} <= reasons


def drive_with_joins_and_aborts(model_dir, overlapped: bool):
    engine = LLMEngine(model_dir, EngineConfig(async_scheduling=overlapped, **ENGINE))
    params = [SamplingParams(seed=i, temperature=0.9, max_tokens=10 + i, logprobs=1) for i in range(8)]
    for i in range(3):
        engine.add_request(f"r{i}", PROMPTS[i], params[i])
    joins = {2: [3, 4], 5: [5, 6], 9: [7]}  # after that many steps, these requests join
    done, steps = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
        steps += 1
        for i in joins.get(steps, []):
            engine.add_request(f"r{i}", PROMPTS[i % len(PROMPTS)], params[i])
        if steps == 4:
            engine.abort_request("r1")  # a running request
        if steps == 10:
            engine.abort_request("r7")  # one that has just joined
    check_released(engine)
    return done


def test_requests_joining_and_aborted_mid_run(model_dir):
    sync = drive_with_joins_and_aborts(model_dir, False)
    overlapped = drive_with_joins_and_aborts(model_dir, True)
    assert sorted(sync) == sorted(overlapped) == sorted({f"r{i}" for i in range(8)} - {"r1", "r7"})
    ids = sorted(sync)
    assert completions([overlapped[i] for i in ids]) == completions([sync[i] for i in ids])
    assert_same_logprobs([sync[i] for i in ids], [overlapped[i] for i in ids], exact=False)


def test_preemption_under_a_tiny_kv_pool(model_dir):
    shared = random_prompts([12], seed=5)[0]
    prompts = [shared + p for p in random_prompts([3, 8, 1, 14, 6], seed=6)]  # prefix-cache hits too
    params = [SamplingParams(seed=i, temperature=0.8, max_tokens=24, ignore_eos=True, presence_penalty=0.2)
              for i in range(3)] + [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)] * 2
    _, engine = assert_same(model_dir, prompts, params, num_kv_blocks=32, max_model_len=64, max_num_seqs=5)
    assert engine.scheduler.num_preemptions > 0


def test_shared_pool_of_two_models(tmp_path):
    base = make_model_dir(tmp_path / "base", "llama", seed=1)
    instruct = make_model_dir(tmp_path / "instruct", "llama", seed=2)
    results = []
    for overlapped in (False, True):
        engine = LLMEngine({"base": base, "instruct": instruct},
                           EngineConfig(async_scheduling=overlapped, **{**ENGINE, "num_kv_blocks": 40}))
        for i, prompt in enumerate(PROMPTS):
            for model in ("base", "instruct"):
                engine.add_request(f"{model}{i}", prompt, SamplingParams(seed=i, max_tokens=8 + i), model=model)
        done = {}
        while engine.has_unfinished_requests():
            done.update((o.request_id, o) for o in engine.step())
        check_released(engine)
        results.append(completions([done[k] for k in sorted(done)]))
    assert results[0] == results[1] and len(results[0]) == 2 * len(PROMPTS)


def test_greedy_matches_transformers(model_dir):
    prompts = PROMPTS[:4]
    outputs, _ = generate(model_dir, prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True), True)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(model_dir, prompts, 16)


def count_overlapped_steps(monkeypatch) -> list[int]:
    calls = [0]
    original = OverlappedSteps.step

    def counted(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(OverlappedSteps, "step", counted)
    return calls


def count_synchronous_steps(monkeypatch) -> list[str]:
    """The model of every synchronous step an overlapped engine runs."""
    models = []
    original = OverlappedSteps.run_batch

    def counted(self, batch):
        models.append(batch.model)
        return original(self, batch)

    monkeypatch.setattr(OverlappedSteps, "run_batch", counted)
    return models


def ban_seven(output_ids, logits):
    logits[7] = float("-inf")
    return logits


def test_logits_processors_and_constraints_run_synchronously(model_dir, monkeypatch):
    params = [SamplingParams(seed=i, max_tokens=8) for i in range(len(PROMPTS))]
    params[1] = SamplingParams(seed=1, max_tokens=8, logits_processors=[ban_seven])
    params[3] = SamplingParams(seed=3, max_tokens=8, allowed_token_sequences=[[5, 6, 7], [9, 10]])
    sync, _ = generate(model_dir, PROMPTS, params, False)
    llm = LLM(model_dir, async_scheduling=True, **ENGINE)
    synchronous = count_synchronous_steps(monkeypatch)
    overlapped = llm.generate(PROMPTS, params, use_tqdm=False)
    assert completions(overlapped) == completions(sync)
    assert sync[3].outputs[0].token_ids in ([5, 6, 7], [9, 10])
    assert 7 not in sync[1].outputs[0].token_ids
    # Synchronous while those requests run (they are among the first admitted), overlapped after.
    assert 0 < len(synchronous) < llm.engine.runners["default"].stats.steps
    check_released(llm.engine)
    synchronous.clear()
    llm.generate(PROMPTS[:3], SamplingParams(seed=0, max_tokens=8), use_tqdm=False)
    assert not synchronous and not llm.engine.requests.host_history_models


def test_only_the_model_with_such_requests_runs_synchronously(tmp_path, monkeypatch):
    models = {"base": make_model_dir(tmp_path / "base", "llama", seed=1),
              "instruct": make_model_dir(tmp_path / "instruct", "llama", seed=2)}
    results, synchronous = [], count_synchronous_steps(monkeypatch)
    for overlapped in (False, True):
        synchronous.clear()
        engine = LLMEngine(models, EngineConfig(async_scheduling=overlapped, **{**ENGINE, "num_kv_blocks": 40}))
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"b{i}", prompt, SamplingParams(seed=i, max_tokens=10), model="base")
            engine.add_request(f"i{i}", prompt, SamplingParams(seed=i, max_tokens=10, logits_processors=[ban_seven]),
                               model="instruct")
        done = {}
        while engine.has_unfinished_requests():
            done.update((o.request_id, o) for o in engine.step())
        check_released(engine)
        results.append(completions([done[k] for k in sorted(done)]))
    assert results[0] == results[1]
    assert synchronous and set(synchronous) == {"instruct"}  # the base model's steps all overlapped


def test_unfinished_requests_never_show_pending_tokens(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(async_scheduling=True, **ENGINE))
    for i, prompt in enumerate(PROMPTS[:3]):
        engine.add_request(f"r{i}", prompt, SamplingParams(seed=i, max_tokens=12, n=2))
    saw_pending = False
    streamed = {f"r{i}": [[], []] for i in range(3)}
    while engine.has_unfinished_requests():
        for rid, parts in streamed.items():
            progress = request_progress(engine, rid, [len(p) for p in parts])
            for part, sample in zip(parts, progress or []):
                part.extend(sample.new_token_ids)
        for out in engine.step():
            for part, c in zip(streamed[out.request_id], out.outputs):
                assert c.token_ids[:len(part)] == part
        for request in engine.requests.values():
            for seq in request.seqs:
                saw_pending |= seq.num_pending > 0
                assert all(t >= 0 for t in seq.token_ids)
                assert len(seq) == len(seq.token_ids) + seq.num_pending
    assert saw_pending  # the overlapped path really ran
    assert all(t >= 0 for parts in streamed.values() for p in parts for t in p)


def test_switching_needs_an_idle_engine(model_dir):
    engine = LLMEngine(model_dir, EngineConfig(async_scheduling=True, **ENGINE))
    engine.add_request("a", PROMPTS[0], SamplingParams(max_tokens=4))
    engine.step()
    with pytest.raises(InvalidRequestError, match="async_scheduling"):
        engine.set_async_scheduling(False)
    engine.abort_request("a")
    engine.set_async_scheduling(False)
    assert not engine.async_scheduling
    check_released(engine)


def test_cli_flag(model_dir, monkeypatch):
    from click.testing import CliRunner

    from bare_engine.cli import main

    calls = count_overlapped_steps(monkeypatch)
    args = ["generate", "--model", str(model_dir), "--prompt", "the fox", "--prompt", "a cat", "--seed", "3",
            "--n", "2", "--max-tokens", "6", "--json"]
    sync = CliRunner().invoke(main, args + ["--no-async-scheduling"])
    assert calls[0] == 0
    overlapped = CliRunner().invoke(main, args + ["--async-scheduling"])
    assert calls[0] > 0
    assert sync.exit_code == overlapped.exit_code == 0, sync.output + overlapped.output
    assert overlapped.output == sync.output and sync.output.count("token_ids") == 4


def random_run(model_dir, seed: int, overlapped: bool):
    """A random engine config and workload: requests joining over time, one abort, a small pool, some
    requests with a logits processor (synchronous steps while they run)."""
    rng = random.Random(seed)
    bs = rng.choice([2, 4, 8])
    config = EngineConfig(async_scheduling=overlapped, block_size=bs, max_model_len=64,
                          num_kv_blocks=64 // bs + rng.randint(1, 64 // bs), max_num_seqs=rng.randint(1, 6),
                          max_num_batched_tokens=rng.choice([8, 16, 64]), enable_prefix_caching=rng.random() < 0.7)
    engine = LLMEngine(model_dir, config)
    eos = engine.tokenizer().eos_token_id
    shared = random_prompts([rng.randint(0, 12)], seed=seed)[0]
    plan = []
    for i in range(rng.randint(3, 8)):
        params = SamplingParams(
            max_tokens=rng.randint(1, 20), n=rng.choice([1, 1, 2]), temperature=rng.choice([0.0, 0.8, 1.3]),
            seed=rng.randrange(1000), top_k=rng.choice([-1, 5]), presence_penalty=rng.choice([0.0, 0.5]),
            logprobs=rng.choice([None, 1]), logit_bias={eos: rng.uniform(0, 5)}, stop=rng.choice([None, ["e", "a "]]),
            stop_token_ids=random_prompts([rng.choice([0, 10])], seed=seed + i)[0],
            logits_processors=[ban_seven] if rng.random() < 0.2 else None)  # its steps run synchronously
        plan.append((rng.randint(0, 6), f"r{i}", shared + random_prompts([rng.randint(1, 30)], seed=seed + i)[0], params))
    abort = (rng.randint(1, 8), f"r{rng.randrange(len(plan))}")
    done, step = {}, 0
    while plan or engine.has_unfinished_requests():
        for _, rid, prompt, params in [p for p in plan if p[0] <= step]:
            engine.add_request(rid, prompt, params)
        plan = [p for p in plan if p[0] > step]
        if step == abort[0]:
            engine.abort_request(abort[1])
        done.update((o.request_id, completions([o])) for o in engine.step())
        step += 1
    check_released(engine)
    done.pop(abort[1], None)  # it may have finished before the abort in one run only
    return done, engine.scheduler.num_preemptions


def test_random_workloads(model_dir):
    preempted = 0
    for seed in (100, 101, 102, 110, 114, 119):  # the last three preempt
        sync, _ = random_run(model_dir, seed, False)
        overlapped, preemptions = random_run(model_dir, seed, True)
        assert overlapped == sync, seed
        preempted += preemptions > 0
    assert preempted > 0


def test_prefix_cache_holds_generated_tokens(model_dir):
    """Blocks full of generated tokens are cached under their real tokens (not pending ones)."""
    hits = []
    for overlapped in (False, True):
        llm = LLM(model_dir, async_scheduling=overlapped, **ENGINE)
        first = llm.generate(PROMPTS[:2], SamplingParams(seed=1, max_tokens=20, ignore_eos=True), use_tqdm=False)
        pool = llm.engine.scheduler.pools["default"]
        before = pool.num_hit_blocks
        again = [p + o.outputs[0].token_ids for p, o in zip(PROMPTS[:2], first)]
        llm.generate(again, SamplingParams(max_tokens=2), use_tqdm=False)
        hits.append(pool.num_hit_blocks - before)
    assert hits[1] == hits[0] >= (len(PROMPTS[1]) + 20) // ENGINE["block_size"] - 1
