"""Throughput benchmark: the engine vs transformers ``generate`` on the same model and requests.

Both sides decode greedily with every request's own output length. transformers runs
static batches (left-padded, each batch generating until its longest request is
done); only the tokens each request asked for count as output for either side.
"""

from __future__ import annotations

import gc
import json
import platform
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bare_engine.config import EngineConfig
from bare_engine.llm import LLM
from bare_engine.model.loader import checkpoint_num_parameters
from bare_engine.sampling_params import SamplingParams

PRESETS = {
    # ~60M parameters: small enough for a 2-core CPU run.
    "cpu-50m": dict(arch="llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024),
    "tiny": dict(arch="llama", vocab_size=512, max_position_embeddings=1024),
    # The shape of nano-vllm's benchmark model, random weights.
    "qwen3-0.6b": dict(arch="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       max_position_embeddings=4096, tie_word_embeddings=True),
}

WORKLOADS = {
    "fixed": dict(prompt=(128, 128), output=(128, 128)),
    "variable": dict(prompt=(16, 512), output=(16, 256)),
    "nanovllm": dict(prompt=(100, 1024), output=(100, 1024)),
    "smoke": dict(prompt=(4, 32), output=(4, 16)),  # scripts/gpu_check.sh --dry-run
}


def make_requests(workload: str, num_requests: int, vocab_size: int, seed: int = 0):
    spec = WORKLOADS[workload]
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        prompt_len = rng.randint(*spec["prompt"])
        output_len = rng.randint(*spec["output"])
        requests.append(([rng.randrange(3, vocab_size) for _ in range(prompt_len)], output_len))
    return requests


# Peak memory bandwidth (bytes/s) by device-name substring, most specific first.
PEAK_BANDWIDTH = [
    ("GH200", 4.0e12),
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("H800", 3.35e12),
    ("H20", 4.0e12),
    ("B200", 8.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("A800", 2.039e12),
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("L4", 0.3e12),
    ("A10G", 0.6e12),
    ("A10", 0.6e12),
    ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12),
    ("V100", 0.9e12),
    ("T4", 0.32e12),
]


def peak_bandwidth(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BANDWIDTH if key in name), None)


def device_name(device: torch.device) -> str:
    """What benchmark JSON files are named after: the GPU's name, or the CPU thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def run_engine(llm: LLM, requests) -> dict:
    prompts = [p for p, _ in requests]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in requests]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
    _sync(llm.engine.device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    _sync(llm.engine.device)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"wall_s": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "preemptions": llm.engine.scheduler.num_preemptions,
            "token_ids": [o.outputs[0].token_ids for o in outputs]}


def run_transformers(model_dir: Path, requests, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad = model.config.pad_token_id or 0
    outputs = []
    _sync(device)
    start = time.perf_counter()
    for i in tqdm(range(0, len(requests), batch_size), desc="transformers", unit="batch"):
        chunk = requests[i:i + batch_size]
        longest = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[pad] * (longest - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p, _ in chunk], device=device)
        new = max(n for _, n in chunk)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=pad)
        outputs.extend(gen[j, longest:longest + n].tolist() for j, (_, n) in enumerate(chunk))
    _sync(device)
    wall = time.perf_counter() - start
    tokens = sum(n for _, n in requests)
    return {"wall_s": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "batch_size": batch_size, "token_ids": outputs}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _leading_match(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def preset_model_dir(preset: str, root: str | Path) -> Path:
    """The preset's random-weight checkpoint under ``root``, made on first use and reused after."""
    from bare_engine.testing import make_model_dir

    path = Path(root) / preset
    if not (path / "config.json").is_file():
        spec = dict(PRESETS[preset])
        make_model_dir(path, spec.pop("arch"), **spec)
    return path


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_throughput_benchmark(
    preset: str,
    workloads: list[str],
    num_requests: int,
    config: EngineConfig,
    with_baseline: bool,
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    decode: dict | None = None,
) -> Path:
    """``model_dir``: a checkpoint of the preset's shape (default: made in a temp folder).
    ``decode``: keyword arguments of ``bench_decode.steady_decode`` (batch, prompt_len, steps):
    also time full-batch decode steps against the memory roofline. The JSON is written once the
    engine is done and again with the baseline, so a run cut short keeps the engine's numbers."""
    from bare_engine.bench.decode import copy_bandwidth, roofline, steady_decode

    vocab_size = PRESETS[preset]["vocab_size"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(model_dir) if model_dir else preset_model_dir(preset, tmp)
        llm = LLM(model_dir, config)
        device, dtype = llm.engine.device, llm.engine.dtype
        num_params = checkpoint_num_parameters(model_dir)  # the whole model, also when sharded over ranks
        runs = []
        for workload in workloads:
            requests = make_requests(workload, num_requests, vocab_size)
            runs.append((workload, requests, run_engine(llm, requests)))
        report = {
            "benchmark": "throughput",
            "device": device_name(device),
            "preset": preset,
            "num_parameters": num_params,
            "dtype": str(dtype).replace("torch.", ""),
            "engine_config": {k: v for k, v in asdict(config).items() if k != "cuda_graph_batch_sizes"},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "results": [{"workload": w, "num_requests": num_requests,
                         "engine": {k: v for k, v in e.items() if k != "token_ids"}} for w, _, e in runs],
        }
        if decode:
            step = steady_decode(llm.engine, model_dir, **decode)
            report["decode_step"] = {**step, **roofline(step, copy_bandwidth(device)),
                                     "peak_bandwidth_Bps": peak_bandwidth(device_name(device))}
        tp = f"_tp{config.tensor_parallel_size}" if config.tensor_parallel_size > 1 else ""
        path = out_dir / f"throughput_{report['device']}{tp}_{preset}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        llm.shutdown()
        del llm
        _release(device)  # the baseline needs the memory of the engine's KV pool
        for row, (_, requests, engine) in zip(report["results"], runs):
            if with_baseline:
                hf = run_transformers(model_dir, requests, config.max_num_seqs, device, dtype)
                agree = [_leading_match(a, b) / len(b) for a, b in zip(engine["token_ids"], hf["token_ids"])]
                row["transformers"] = {k: v for k, v in hf.items() if k != "token_ids"}
                row["speedup_vs_transformers"] = engine["output_tokens_per_s"] / hf["output_tokens_per_s"]
                # Left padding changes transformers' float rounding, so report agreement instead of asserting it.
                row["exact_match_fraction"] = sum(a == 1.0 for a in agree) / len(agree)
                row["mean_leading_agreement"] = sum(agree) / len(agree)
                _release(device)
            print(json.dumps(row), flush=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
