"""The engine at tensor_parallel_size 2 (two processes, gloo on the CPU) equals transformers and tp=1.

One tp=2 engine holds every family at once (so the checks share one spawn); a second one with
a tiny KV budget checks preemption and chunked prefill; a third one loses a worker.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from parity import GREEDY, NEW_TOKENS, PROMPTS, assert_greedy_parity, random_prompts

from bare_engine import EngineConfig, LLMEngine, ModelSpec, SamplingParams
from bare_engine.cli import main
from bare_engine.errors import TensorParallelError
from bare_engine.testing import make_model_dir

pytestmark = pytest.mark.tp

TP2 = dict(device="cpu", tensor_parallel_size=2)
FAMILIES = {
    "llama_gqa": ("llama", {}),  # untied embeddings
    "llama_mha_sharded": ("llama", {"num_key_value_heads": 4, "max_shard_size": "40KB"}),
    "kv_heads_below_tp": ("llama", {"num_key_value_heads": 1}),
    "qwen2_bias_tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3_qk_norm": ("qwen3", {}),
    "mistral": ("mistral", {}),
}
LORA_TARGETS = ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj", "lm_head"]


def run_all(engine, requests):
    """requests: {request id: (model, prompt, params)}; returns {request id: RequestOutput}."""
    for rid, (model, prompt, params) in requests.items():
        engine.add_request(rid, prompt, params, model=model)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    return done


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: read its state.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {name: make_model_dir(tmp_path_factory.mktemp(name), arch, **kw) for name, (arch, kw) in FAMILIES.items()}
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(out["llama_gqa"], dtype=torch.float32)
    torch.manual_seed(5)
    config = peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=LORA_TARGETS)
    out["lora"] = tmp_path_factory.mktemp("lora")
    peft.get_peft_model(base, config).save_pretrained(out["lora"])
    return out


@pytest.fixture(scope="module")
def engine(dirs):
    models = {name: dirs[name] for name in FAMILIES}
    models["lora"] = ModelSpec(dirs["lora"], base=dirs["llama_gqa"])
    with LLMEngine(models, EngineConfig(**TP2, max_model_len=256, num_kv_blocks=256)) as eng:
        yield eng


def test_greedy_parity_with_transformers_every_family_in_one_engine(engine, dirs):
    requests = {f"{name}-{i}": (name, p, GREEDY) for name in FAMILIES for i, p in enumerate(PROMPTS)}
    done = run_all(engine, requests)  # all models interleaved in one engine
    for name in FAMILIES:
        assert_greedy_parity(dirs[name], PROMPTS, [done[f"{name}-{i}"] for i in range(len(PROMPTS))])


def test_lora_at_tp2_equals_transformers_peft(engine, dirs):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dirs["llama_gqa"], dtype=torch.float32)
    reference = peft.PeftModel.from_pretrained(model, dirs["lora"]).eval()
    prompts = PROMPTS[:3]
    done = run_all(engine, {f"lora-{i}": ("lora", p, GREEDY) for i, p in enumerate(prompts)})
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            inp = torch.tensor([prompt])
            expected = reference.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=NEW_TOKENS,
                                          min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0, len(prompt):]
        assert done[f"lora-{i}"].outputs[0].token_ids == expected.tolist()


def test_prefix_cache_hits_at_tp2(engine, dirs):
    shared = random_prompts([40], seed=7)[0]
    prompts = random_prompts([3, 9, 20], seed=8, prefix=shared)
    pool = engine.scheduler.pools["qwen3_qk_norm"]
    hits = pool.num_hit_blocks
    first = run_all(engine, {"p0": ("qwen3_qk_norm", prompts[0], GREEDY)})
    rest = run_all(engine, {f"p{i}": ("qwen3_qk_norm", p, GREEDY) for i, p in enumerate(prompts[1:], 1)})
    assert pool.num_hit_blocks - hits >= 2 * 2
    assert_greedy_parity(dirs["qwen3_qk_norm"], prompts, [first["p0"], rest["p1"], rest["p2"]])


def test_seeded_sampling_same_tokens_at_tp1_and_tp2(engine, dirs):
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=24, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    requests = {f"s{i}": ("qwen2_bias_tied", p, params[i]) for i, p in enumerate(PROMPTS[:3])}
    tp2 = run_all(engine, requests)
    tp1 = run_all(LLMEngine({"qwen2_bias_tied": dirs["qwen2_bias_tied"]}, EngineConfig(device="cpu", max_model_len=256)), requests)
    for rid in requests:
        assert tp2[rid].outputs[0].token_ids == tp1[rid].outputs[0].token_ids


def test_preemption_and_chunked_prefill_then_a_second_engine(dirs):
    config = EngineConfig(**TP2, num_kv_blocks=8, block_size=16, max_num_seqs=8, max_model_len=128, max_num_batched_tokens=16)
    engine = LLMEngine({"m": dirs["llama_gqa"]}, config)
    pids = engine.tensor_parallel_pids
    try:
        done = run_all(engine, {str(i): ("m", p, GREEDY) for i, p in enumerate(PROMPTS)})
        assert engine.scheduler.num_preemptions > 0
        assert_greedy_parity(dirs["llama_gqa"], PROMPTS, [done[str(i)] for i in range(len(PROMPTS))])
    finally:
        engine.shutdown()
    assert pids and not any(alive(p) for p in pids)
    # One engine after the other in one process: a fresh rendezvous, no collision.
    with LLMEngine({"m": dirs["mistral"]}, EngineConfig(**TP2, max_model_len=128)) as second:
        done = run_all(second, {"x": ("m", PROMPTS[2], GREEDY)})
        assert_greedy_parity(dirs["mistral"], PROMPTS[2:3], [done["x"]])
        pids = second.tensor_parallel_pids
        # A killed worker: a clear error naming the rank, quickly, and no orphan.
        os.kill(pids[0], signal.SIGKILL)
        second.add_request("y", PROMPTS[3], GREEDY, model="m")
        start = time.monotonic()
        with pytest.raises(TensorParallelError, match="rank 1 died: killed by SIGKILL"):
            while second.has_unfinished_requests():
                second.step()
        assert time.monotonic() - start < 30
    assert not any(alive(p) for p in pids)


def test_cli_run_at_tp2_writes_the_same_file_as_tp1(tmp_path):
    """The demo pair (BARE: base generates, instruct refines); tp=2 in its own process, which must exit cleanly."""
    args = ["run", "--num", "3", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "tp1.jsonl")])
    assert result.exit_code == 0, result.output
    cmd = [sys.executable, "-c", "from bare_engine.cli import main; main()", *args,
           "--out", str(tmp_path / "tp2.jsonl"), "--tensor-parallel-size", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    tp1, tp2 = ((tmp_path / f"tp{n}.jsonl").read_bytes() for n in (1, 2))
    assert tp1 == tp2 and tp1.count(b"\n") == 3
