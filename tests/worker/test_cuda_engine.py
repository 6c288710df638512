"""The engine end to end on CUDA (run by scripts/gpu_check.sh; skipped without CUDA): decode
CUDA graphs against eager, seeded sampling in and out of graphs, the Triton backends against
the torch ones, bf16 greedy against transformers in bf16, and async scheduling (overlapped
steps, the CUDA default) against synchronous steps.

float32 comparisons are exact. In bf16 two implementations round differently, so greedy
outputs may part at a near-tie: the rule (as in tests/test_parity.py) is that they are
identical, or the engine's token at the first divergence is in transformers' top 5 there.
"""

import random

import pytest
import torch

from bare_engine import LLM, SamplingParams
from bare_engine.testing import make_model_dir

pytestmark = pytest.mark.cuda

KV_BLOCKS = 1024  # explicit: the default takes 90% of the GPU, and each test builds several engines
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
FILTERS = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.1, frequency_penalty=0.2,
               presence_penalty=0.1, max_tokens=24, ignore_eos=True)


def prompts(lengths, seed=0, vocab=480):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


PROMPTS = prompts([1, 7, 16, 17, 40, 3, 90, 25])  # 8 rows: a captured batch size; 5 of them: a padded one


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_models")
    return {
        "llama": make_model_dir(root / "llama", "llama", num_key_value_heads=2),
        "qwen3": make_model_dir(root / "qwen3", "qwen3", num_key_value_heads=1),
        # Wider, for bf16: head_dim 64 and GQA 4, as real models have.
        "qwen3-wide": make_model_dir(root / "qwen3-wide", "qwen3", hidden_size=256, intermediate_size=512,
                                     num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64),
    }


def engine(model_dir, **kwargs) -> LLM:
    kwargs = {"num_kv_blocks": KV_BLOCKS, "max_num_seqs": 8, "dtype": "float32", **kwargs}
    return LLM(model_dir, **kwargs)


def tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def generate_counting_graph_replays(llm: LLM, batch, params, monkeypatch) -> tuple[list[list[int]], int]:
    replays = 0
    replay = torch.cuda.CUDAGraph.replay

    def counted(graph):
        nonlocal replays
        replays += 1
        return replay(graph)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counted)
    out = tokens(llm.generate(batch, params, use_tqdm=False))
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", replay)
    return out, replays


@pytest.mark.parametrize("num_prompts", [8, 5])
def test_cuda_graph_decode_equals_eager_token_for_token(model_dirs, num_prompts, monkeypatch):
    batch = PROMPTS[:num_prompts]
    for arch in ("llama", "qwen3"):
        eager, eager_replays = generate_counting_graph_replays(
            engine(model_dirs[arch], enforce_eager=True), batch, GREEDY, monkeypatch)
        graphed, graph_replays = generate_counting_graph_replays(engine(model_dirs[arch]), batch, GREEDY, monkeypatch)
        assert eager_replays == 0
        assert graph_replays >= GREEDY.max_tokens // 2, "decode steps did not replay CUDA graphs"
        assert graphed == eager, arch


def test_seeded_sampling_is_identical_in_and_out_of_cuda_graphs(model_dirs):
    params = [SamplingParams(seed=100 + i, **FILTERS) for i in range(len(PROMPTS))]
    model_dir = model_dirs["qwen3"]
    eager = tokens(engine(model_dir, enforce_eager=True).generate(PROMPTS, params, use_tqdm=False))
    graphed_llm = engine(model_dir)
    graphed = tokens(graphed_llm.generate(PROMPTS, params, use_tqdm=False))
    assert graphed == eager
    # The same seeds alone, in another batch composition, draw the same tokens.
    alone = tokens(graphed_llm.generate(PROMPTS[2:5], params[2:5], use_tqdm=False))
    assert alone == eager[2:5]
    assert len({tuple(t) for t in eager}) == len(eager)  # really sampled: no two rows alike


def test_triton_backends_equal_torch_backends_end_to_end(model_dirs):
    model_dir = model_dirs["llama"]
    shared = prompts([20], seed=3)[0]
    batch = [shared + p for p in prompts([1, 6, 13], seed=4)] + PROMPTS[:4]
    kwargs = dict(block_size=16, max_num_batched_tokens=32, enforce_eager=True)  # chunked prefill, prefix hits
    reference = engine(model_dir, attention_backend="torch", sampler_backend="torch", **kwargs)
    triton_llm = engine(model_dir, attention_backend="triton", sampler_backend="triton", **kwargs)
    sampled = [SamplingParams(seed=7 + i, **FILTERS) for i in range(len(batch))]
    for params in (GREEDY, sampled):
        assert tokens(triton_llm.generate(batch, params, use_tqdm=False)) == \
            tokens(reference.generate(batch, params, use_tqdm=False))


def hf_bf16(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()


@torch.no_grad()
def hf_greedy_and_top5(model, prompt: list[int], new_tokens: int) -> tuple[list[int], list[set[int]]]:
    """transformers' greedy continuation and, at each of its positions, its top-5 token ids."""
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    continuation = out[0, len(prompt):].tolist()
    logits = model(out[:, :-1]).logits[0, len(prompt) - 1:]
    return continuation, [set(row.topk(5).indices.tolist()) for row in logits]


@pytest.mark.parametrize("arch", ["llama", "qwen3-wide"])
def test_bf16_greedy_matches_transformers_bf16_with_top5_rule(model_dirs, arch):
    model_dir = model_dirs[arch]
    llm = engine(model_dir, dtype="bfloat16")
    assert llm.engine.dtype == torch.bfloat16
    got = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    model = hf_bf16(model_dir)
    for prompt, engine_tokens in zip(PROMPTS, got):
        expected, top5 = hf_greedy_and_top5(model, prompt, GREEDY.max_tokens)
        assert len(engine_tokens) == len(expected)
        if engine_tokens != expected:
            i = next(i for i, (a, b) in enumerate(zip(engine_tokens, expected)) if a != b)
            assert engine_tokens[i] in top5[i], f"diverged at token {i}: engine {engine_tokens[i]} not in {top5[i]}"


def test_async_scheduling_equals_synchronous_steps(model_dirs):
    """Overlapped steps (the CUDA default) against synchronous ones, with decode graphs: greedy, seeded
    filters and penalties, logprobs, stop tokens, n > 1, a small pool (preemption) and rows joining mid-run."""
    model_dir = model_dirs["qwen3"]
    plain = tokens(engine(model_dir, async_scheduling=False).generate(PROMPTS, GREEDY, use_tqdm=False))
    params = [SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[plain[i][9]]) if i % 4 == 1 else
              SamplingParams(seed=20 + i, n=1 + i % 2, logprobs=2 if i % 3 == 0 else None, **FILTERS)
              for i in range(len(PROMPTS))]
    for kwargs in (dict(), dict(num_kv_blocks=12, block_size=16, max_model_len=128, max_num_seqs=4)):
        runs = []
        for overlapped in (False, True):
            llm = engine(model_dir, async_scheduling=overlapped, **kwargs)
            assert llm.engine.async_scheduling is overlapped
            outs = llm.generate(PROMPTS, params, use_tqdm=False) + llm.generate(PROMPTS, GREEDY, use_tqdm=False)
            runs.append([[(c.token_ids, c.finish_reason, c.stop_reason, c.text) for c in o.outputs] for o in outs])
            if "num_kv_blocks" in kwargs:
                assert llm.engine.scheduler.num_preemptions > 0
        assert runs[1] == runs[0], kwargs
    assert [r[0][0] for r in runs[0][len(PROMPTS):]] == plain
    assert {r[0][1] for r in runs[0]} == {"stop", "length"}


def test_overlapped_decode_steps_do_not_sync_implicitly(model_dirs):
    """Async scheduling's steady decode step waits for the device only where it means to (the CUDA event of
    the previous step's tokens): no implicit sync (a pageable copy, .item(), .tolist() of a device tensor)."""
    llm = engine(model_dirs["qwen3"])
    assert llm.engine.async_scheduling  # the CUDA default
    params = SamplingParams(seed=5, logprobs=2, logit_bias={9: 1.0}, **{**FILTERS, "max_tokens": 64})
    for i, prompt in enumerate(PROMPTS):
        llm.engine.add_request(f"r{i}", prompt, params)
    for _ in range(6):  # past the prefill: every row decodes, penalty rows are set up
        llm.engine.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            llm.engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        for i in range(len(PROMPTS)):
            llm.engine.abort_request(f"r{i}")
