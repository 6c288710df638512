"""The pipeline loop against the fake engine: modes, drops, order, determinism, resume, interrupts."""

from __future__ import annotations

from collections import Counter

import pytest
from test_pipeline_fake_engine import (
    SEEDS,
    FakeEngine,
    base_script,
    default_script,
    fake_factory,
    fake_setup,
    read_records,
    write_jsonl,
)

from bare_engine.errors import PromptTooLongError, ResumeMismatchError
from bare_engine.pipeline.config import STAGE_MODEL
from bare_engine.pipeline.run import run_pipeline
from bare_engine.pipeline.seeds import Example
from bare_engine.pipeline.stages import StagePlanner, derive_seed
from bare_engine.pipeline.templates import Templates


def _check_records(records, cfg):
    assert [r["id"] for r in records] == list(range(cfg.num))
    candidates = [r["candidate"] for r in records]
    assert candidates == sorted(set(candidates))
    for r in records:
        assert r["mode"] == cfg.mode
        assert set(r["fields"]) == set(cfg.fields) and all(r["fields"].values())
        for stage in cfg.stages:
            s = r[stage]
            assert s["seed"] == derive_seed(cfg.seed, r["candidate"], stage)
            assert s["model"] == STAGE_MODEL[stage] and s["finish_reason"] == "stop"
            assert s["prompt_tokens"] > 0 and s["output_tokens"] > 0
            assert cfg.templates.parse(s["text"]) == s["fields"]
        assert r["fields"] == r[cfg.stages[-1]]["fields"]


@pytest.mark.parametrize("mode", ["bare", "base", "instruct"])
def test_generation_modes_write_exactly_num_valid_records(tmp_path, mode):
    cfg = fake_setup(tmp_path, mode=mode, num=15)
    factory = fake_factory(max_num_seqs=5)
    result = run_pipeline(cfg, factory, log=lambda _: None)
    records = read_records(cfg.out)
    assert result.complete and len(records) == 15
    _check_records(records, cfg)
    assert set(factory.engines[0].model_names) == set(cfg.model_names)
    assert not factory.engines[0].has_unfinished_requests()  # work past the last needed index was aborted
    assert result.candidates == records[-1]["candidate"] + 1
    assert sum(result.drops.values()) == result.candidates - 15


def test_bare_refines_the_base_candidate_and_interleaves(tmp_path):
    cfg = fake_setup(tmp_path, num=10)
    factory = fake_factory(max_num_seqs=3)
    run_pipeline(cfg, factory, log=lambda _: None)
    for r in read_records(cfg.out):
        assert r["refine"]["fields"]["question"] == "Better: " + r["base"]["fields"]["question"]
        assert r["seed_ids"] == ["s0", "s1", "s2"]
    events = factory.engines[0].events
    first_refine = next(i for i, (kind, rid) in enumerate(events) if kind == "add" and rid.startswith("refine"))
    last_base = max(i for i, (kind, rid) in enumerate(events) if kind == "finish" and rid.startswith("base"))
    assert first_refine < last_base  # refinement starts while base generation is still running


def test_refine_mode_refines_a_candidates_file(tmp_path):
    inputs = [{"question": f"Q{i}?", "answer": f"#### {i}"} for i in range(8)]
    inputs[3] = {"fields": {"question": "Q3 from an earlier run?", "answer": "#### 3"}, "id": 0}
    cands = write_jsonl(tmp_path / "cands.jsonl", inputs)
    cfg = fake_setup(tmp_path, mode="refine", candidates=str(cands), num=5)
    result = run_pipeline(cfg, fake_factory(), log=lambda _: None)
    records = read_records(cfg.out)
    _check_records(records, cfg)
    for r in records:
        assert r["input"]["index"] == r["candidate"]
        assert r["refine"]["fields"]["question"] == "Better: " + r["input"]["fields"]["question"]
    assert result.complete


def test_refine_mode_stops_when_the_input_is_used_up(tmp_path):
    cands = write_jsonl(tmp_path / "cands.jsonl", [{"question": f"Q{i}?", "answer": "1"} for i in range(4)])
    cfg = fake_setup(tmp_path, mode="refine", candidates=str(cands), num=10)
    result = run_pipeline(cfg, fake_factory(), log=lambda _: None)
    assert not result.complete and "input candidates used" in result.stop_reason
    assert result.candidates == 4 and result.written + sum(result.drops.values()) == 4


def test_drops_are_counted_by_reason(tmp_path):
    cfg = fake_setup(tmp_path, mode="base", num=60)
    result = run_pipeline(cfg, fake_factory(), log=lambda _: None)
    kept = {r["candidate"] for r in read_records(cfg.out)}
    expected = Counter()
    for i in range(max(kept) + 1):
        text = base_script("", derive_seed(cfg.seed, i, "base")).split(cfg.templates.stop_string)[0]
        _, reason = cfg.templates.parse_with_reason(text)
        if len(text) // 3 + (len(text) % 3 > 0) > cfg.sampling.base.max_tokens:
            reason = "length"
        assert (reason is None) == (i in kept)
        if reason:
            expected[f"base:{reason}"] += 1
    assert result.drops == expected
    assert {"base:missing:question", "base:empty:answer", "base:length"} <= set(expected)


def test_truncated_outputs_are_kept_when_allowed(tmp_path):
    cfg = fake_setup(tmp_path, mode="base", num=60, drop_truncated=False)
    result = run_pipeline(cfg, fake_factory(), log=lambda _: None)
    assert "base:length" not in result.drops
    assert any(r["base"]["finish_reason"] == "length" for r in read_records(cfg.out))


@pytest.mark.parametrize("mode", ["bare", "instruct"])
def test_output_is_identical_whatever_the_batching(tmp_path, mode):
    outputs = set()
    for n, (max_num_seqs, order_seed, in_flight) in enumerate([(1, 0, 0), (4, 1, 3), (16, 2, 0), (7, 3, 40)]):
        cfg = fake_setup(tmp_path / str(n), mode=mode, num=14, seed=5, max_in_flight=in_flight,
                         **{"engine.max_num_seqs": max_num_seqs})
        run_pipeline(cfg, fake_factory(order_seed=order_seed), log=lambda _: None)
        outputs.add(open(cfg.out, "rb").read().replace(str(tmp_path / str(n)).encode(), b""))
    assert len(outputs) == 1


def test_run_seed_changes_the_output(tmp_path):
    texts = []
    for seed in (0, 1):
        cfg = fake_setup(tmp_path / str(seed), num=5, seed=seed)
        run_pipeline(cfg, fake_factory(), log=lambda _: None)
        texts.append([r["fields"] for r in read_records(cfg.out)])
    assert texts[0] != texts[1]


def test_shuffled_seed_order_draws_k_seeds_per_candidate(tmp_path):
    cfg = fake_setup(tmp_path, num=10, seed_order="shuffle", k=2)
    run_pipeline(cfg, fake_factory(), log=lambda _: None)
    ids = [tuple(r["seed_ids"]) for r in read_records(cfg.out)]
    assert all(len(set(i)) == 2 and set(i) <= {s["id"] for s in SEEDS} for i in ids)
    assert len(set(ids)) > 3
    again = fake_setup(tmp_path / "again", num=10, seed_order="shuffle", k=2)
    run_pipeline(again, fake_factory(order_seed=9, max_num_seqs=2), log=lambda _: None)
    assert [tuple(r["seed_ids"]) for r in read_records(again.out)] == ids


def test_interrupted_run_resumes_to_the_same_file(tmp_path):
    reference = fake_setup(tmp_path / "ref", num=20)
    run_pipeline(reference, fake_factory(), log=lambda _: None)

    cfg = fake_setup(tmp_path / "run", num=20)
    first = run_pipeline(cfg, fake_factory(interrupt_after_steps=50), log=lambda _: None)
    assert first.interrupted and 0 < first.records < 20
    assert len(read_records(cfg.out)) == first.records
    with open(cfg.out, "ab") as f:
        f.write(b'{"id": 99, "candid')  # a torn line, as left by a kill during a write
    logs = []
    second = run_pipeline(cfg, fake_factory(max_num_seqs=2), log=logs.append)
    assert second.complete and any("torn" in line for line in logs)
    strip = lambda path, root: open(path, "rb").read().replace(str(root).encode(), b"")  # noqa: E731
    assert strip(cfg.out, tmp_path / "run") == strip(reference.out, tmp_path / "ref")
    third = run_pipeline(cfg, fake_factory(), log=logs.append)
    assert third.written == 0 and "nothing to do" in logs[-1]


def test_resume_refuses_a_different_config(tmp_path):
    cfg = fake_setup(tmp_path, num=4)
    run_pipeline(cfg, fake_factory(), log=lambda _: None)
    with pytest.raises(ResumeMismatchError, match="k: 3 -> 2"):
        run_pipeline(fake_setup(tmp_path, num=8, k=2), fake_factory(), log=lambda _: None)
    write_jsonl(tmp_path / "seeds.jsonl", SEEDS[::-1])
    with pytest.raises(ResumeMismatchError, match="seeds file changed"):
        run_pipeline(fake_setup(tmp_path, num=8), fake_factory(), log=lambda _: None)
    write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    # Speed-only settings and a larger target may change.
    more = fake_setup(tmp_path, num=8, max_in_flight=3, **{"engine.max_num_seqs": 2})
    assert run_pipeline(more, fake_factory(), log=lambda _: None).written == 4


def test_resume_refuses_an_output_without_manifest(tmp_path):
    cfg = fake_setup(tmp_path, num=4)
    write_jsonl(tmp_path / "out.jsonl", [{"candidate": 0}])
    with pytest.raises(ResumeMismatchError, match="no readable manifest"):
        run_pipeline(cfg, fake_factory(), log=lambda _: None)


def test_gives_up_after_max_candidates_when_nothing_parses(tmp_path):
    cfg = fake_setup(tmp_path, mode="base", num=3, max_candidates=25)
    never = lambda model, prompt, seed: "no markers here"  # noqa: E731
    result = run_pipeline(cfg, fake_factory(script=never), log=lambda _: None)
    assert not result.complete and "max_candidates (25)" in result.stop_reason
    assert result.drops == Counter({"base:missing:question": 25})


def test_refine_prompt_too_long_drops_the_candidate(tmp_path):
    def base_by_seed_parity(model, prompt, seed):
        if model == "instruct":
            return default_script(model, prompt, seed)
        words = "and more " * (60 if seed % 2 else 1)
        return f"Question: Sam has pens {words}?\nAnswer: #### 1\n</example>"

    cfg = fake_setup(tmp_path, num=8, **{"sampling.base.max_tokens": 1000})
    planner = StagePlanner(cfg, [Example(s["id"], {f: s[f] for f in cfg.fields}) for s in SEEDS],
                           FakeEngine({"instruct": "i"}).tokenizer)
    cand = planner.candidate(0)
    cand.fields = {"question": "Sam has pens and more ?", "answer": "#### 1"}
    short_refine = len(planner.request(cand, "refine")[1])
    factory = fake_factory(script=base_by_seed_parity, max_prompt_tokens=short_refine + 20)
    result = run_pipeline(cfg, factory, log=lambda _: None)
    assert result.complete and result.drops["refine:prompt_too_long"] > 0
    assert all(r["base"]["seed"] % 2 == 0 for r in read_records(cfg.out))


def test_base_prompt_too_long_is_an_error(tmp_path):
    cfg = fake_setup(tmp_path, num=3)
    with pytest.raises(PromptTooLongError):
        run_pipeline(cfg, fake_factory(max_prompt_tokens=20), log=lambda _: None)


def test_permissive_single_field_template(tmp_path):
    templates = Templates(example="{text}", field_markers={"text": ""})
    assert templates.parse("anything at all\n</example>") == {"text": "anything at all"}
    seeds = write_jsonl(tmp_path / "plain.jsonl", [{"text": f"example {i}"} for i in range(3)])
    cfg = fake_setup(tmp_path, mode="base", num=6, seeds=str(seeds), fields=["text"],
                     **{"templates.example": "{text}", "templates.field_markers": {"text": ""}})
    run_pipeline(cfg, fake_factory(), log=lambda _: None)
    assert len(read_records(cfg.out)) == 6


def test_fake_engine_is_used_per_contract_for_chat_prompts(tmp_path):
    seen = []

    def script(model, prompt, seed):
        seen.append((model, prompt))
        return default_script(model, prompt, seed)

    cfg = fake_setup(tmp_path, mode="instruct", num=2, system_prompt="Be brief.")
    run_pipeline(cfg, fake_factory(script=script), log=lambda _: None)
    model, prompt = seen[0]
    assert model == "instruct"
    assert prompt.startswith("<|system|>Be brief.<|end|><|user|>") and prompt.endswith("<|assistant|>")

