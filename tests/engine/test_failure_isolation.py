"""Engine invariant: one request that fails at any stage of a step ends alone, with finish_reason
"error" and its message; every other request of the batch gets exactly the tokens it gets in a
run without the failing one (issue 30, item 1)."""

import pytest

from bare_engine import EngineConfig, LLM, LLMEngine, SamplingParams
from bare_engine.errors import InvalidRequestError, InvalidSamplingParamsError
from bare_engine.testing import make_model_dir

OTHERS = {  # request id -> (prompt, params): greedy, seeded with penalties and logprobs, n=2 sampled
    "greedy": ([5, 6, 7, 8], dict(temperature=0.0, max_tokens=8, ignore_eos=True)),
    "seeded": ([9, 3, 4], dict(temperature=0.9, top_k=30, top_p=0.95, presence_penalty=0.5,
                               repetition_penalty=1.2, logprobs=2, seed=11, max_tokens=8, ignore_eos=True)),
    "pair": ([7, 7, 2, 1, 9], dict(n=2, temperature=1.1, min_p=0.05, seed=5, max_tokens=8, ignore_eos=True)),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama")


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlapped"])
def engine(request, model_dir):
    with LLMEngine(model_dir, EngineConfig(max_num_seqs=8, async_scheduling=request.param)) as engine:
        yield engine


def run(engine, break_one=None) -> dict:
    """Outputs of OTHERS (plus, with ``break_one``, a request it breaks after queueing) by request id."""
    for request_id, (prompt, params) in OTHERS.items():
        if request_id == "seeded" and break_one is not None:
            break_one(engine)  # the bad request joins between the others
        engine.add_request(request_id, prompt, SamplingParams(**params))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    return done


def tokens(outputs: dict) -> dict:
    return {rid: [(c.token_ids, c.finish_reason, c.logprobs) for c in out.outputs]
            for rid, out in outputs.items() if rid in OTHERS}


def queue_bad(mutate, **params):
    """A request that passes intake and is then made to fail by ``mutate(params, request)``."""
    def break_one(engine):
        p = SamplingParams(max_tokens=6, ignore_eos=True, seed=3, **params)
        engine.add_request("bad", [4, 5, 6], p)
        mutate(p, engine.requests.get("bad"))
    return break_one


def set_attr(name, value):
    return lambda params, request: setattr(params, name, value)


def failing_processor(output_ids, logits):
    if len(output_ids) >= 2:
        raise RuntimeError("processor broke")
    return logits


class BrokenDetokenizer:
    def __init__(self, inner):
        self.inner = inner

    def add(self, token):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "forced")

    def final_text(self, *args):
        return self.inner.final_text(*args)


def break_detokenizer(params, request):
    for seq in request.seqs:
        seq.detok = BrokenDetokenizer(seq.detok)


STAGES = {
    # packing (Sampler.add_row): top_k past int64 once the request is queued, as in the issue
    "pack top_k": (queue_bad(set_attr("top_k", 2**64), temperature=0.8), "sampling parameters cannot be packed"),
    "pack temperature": (queue_bad(set_attr("temperature", "hot")), "sampling parameters cannot be packed"),
    "logit_bias": (queue_bad(set_attr("logit_bias", {10**9: 1.0}), logit_bias={1: 1.0}), "logit_bias failed"),
    "allowed tokens": (queue_bad(set_attr("allowed_token_ids", [10**9]), allowed_token_ids=[1, 2]),
                       "allowed tokens failed"),
    "logits processor": (queue_bad(lambda p, r: None, logits_processors=[failing_processor]), "processor broke"),
    "detokenization": (queue_bad(break_detokenizer), "processing output token"),
}


@pytest.fixture(scope="module")
def baseline(engine):
    return tokens(run(engine))


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_request_failing_at_each_stage_fails_alone(engine, baseline, stage):
    break_one, message = STAGES[stage]
    outputs = run(engine, break_one)
    assert tokens(outputs) == baseline
    bad = outputs["bad"].outputs[0]
    assert bad.finish_reason == "error" and message in bad.error
    assert not engine.has_unfinished_requests()
    assert all(pool.num_free_blocks == pool.num_blocks for pool in engine.scheduler.pools.values())


def test_a_request_failing_at_intake_fails_alone_and_queues_nothing(engine, baseline):
    def break_one(engine):
        for prompt, params in [("\ud800 lone surrogate", {}), ([4, 5], {"stop_token_ids": [10**6]})]:
            with pytest.raises(InvalidRequestError):
                engine.add_request("bad", prompt, SamplingParams(**params))
        assert "bad" not in engine.requests
    assert tokens(run(engine, break_one)) == baseline


@pytest.mark.parametrize("kwargs", [dict(top_k=2**63), dict(top_k=4294967297), dict(seed=2**70),
                                    dict(seed=-(2**70)), dict(seed=2**63), dict(temperature=1e308)])
def test_values_their_storage_cannot_hold_are_rejected_not_wrapped(kwargs):
    with pytest.raises(InvalidSamplingParamsError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_a_bad_value_through_llm_raises_and_leaves_nothing_queued(model_dir):
    """The issue's case: top_k >= 2**63 raised a raw OverflowError and the request ran in the next call."""
    llm = LLM(model_dir, max_num_seqs=4)
    good = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    with pytest.raises(InvalidSamplingParamsError, match="top_k"):
        llm.generate(["a b", "c d"], [good, SamplingParams(top_k=2**63)], use_tqdm=False)
    bad = SamplingParams(max_tokens=4)
    bad.top_k = 2**63  # assigned after construction: checked again at intake
    with pytest.raises(InvalidSamplingParamsError, match="top_k"):
        llm.generate(["a b", "c d"], [good, bad], use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    [out] = llm.generate(["a b"], good, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 4


def test_a_step_that_raises_leaves_nothing_of_the_call_queued(model_dir, monkeypatch):
    llm = LLM(model_dir, max_num_seqs=4)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    monkeypatch.setattr(llm.engine, "step", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        llm.generate(["a b", "c d"], params, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
