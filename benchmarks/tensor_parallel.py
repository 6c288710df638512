"""Step time with tensor parallelism vs one rank, on the same model and requests.

    OMP_NUM_THREADS=1 python benchmarks/tensor_parallel.py                 # CPU, cpu-50m, tp 1 vs 2
    python benchmarks/tensor_parallel.py --preset qwen3-0.6b --tp 1 --tp 2 --tp 4 --tp 8   # a multi-GPU node

Each configuration gets a fresh engine (warmed up); one batch of requests is prefilled in one
step and then decoded together, and the median prefill and decode step times are recorded.
On the CPU, tp=1 runs with one thread and with as many threads as tp=2 uses in all, so the
comparison is at equal cores too. Greedy outputs must be the same in every configuration.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from bare_engine import LLM, EngineConfig, SamplingParams
from bare_engine.bench.throughput import PRESETS, device_name, make_requests
from bare_engine.testing import make_model_dir

RESULTS = Path(__file__).parent / "results"


def step_times(llm: LLM, prompts, max_tokens: int) -> tuple[list[float], list[float], list[list[int]]]:
    """(prefill step seconds, decode step seconds, output token ids) of one batch."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    prefill, decode, outputs = [], [], {}
    first = True
    while engine.has_unfinished_requests():
        _sync(engine.device)
        start = time.perf_counter()
        for out in engine.step():
            outputs[out.request_id] = out.outputs[0].token_ids
        _sync(engine.device)
        (prefill if first else decode).append(time.perf_counter() - start)
        first = False
    return prefill, decode, [outputs[f"r{i}"] for i in range(len(prompts))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_dir: Path, tp: int, threads: int | None, prompts, max_tokens: int, repeats: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    config = EngineConfig(tensor_parallel_size=tp, max_num_seqs=len(prompts),
                          max_num_batched_tokens=sum(len(p) for p in prompts), enable_prefix_caching=False)
    with LLM(model_dir, config) as llm:
        step_times(llm, prompts[:2], 4)  # warm-up
        prefill, decode, outputs = [], [], None
        for _ in range(repeats):
            p, d, outputs = step_times(llm, prompts, max_tokens)
            prefill += p
            decode += d
    return {"tensor_parallel_size": tp, "threads_per_rank": threads or torch.get_num_threads(),
            "prefill_step_ms": 1000 * statistics.median(prefill), "decode_step_ms": 1000 * statistics.median(decode),
            "decode_steps": len(decode), "token_ids": outputs}


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="cpu-50m", show_default=True)
@click.option("--tp", "tps", type=int, multiple=True, default=(1, 2), show_default=True)
@click.option("--num-requests", type=int, default=16, show_default=True)
@click.option("--prompt-len", type=int, default=64, show_default=True)
@click.option("--max-tokens", type=int, default=16, show_default=True)
@click.option("--repeats", type=int, default=2, show_default=True)
def main(preset, tps, num_requests, prompt_len, max_tokens, repeats):
    spec = dict(PRESETS[preset])
    arch = spec.pop("arch")
    prompts = [p[:prompt_len] for p, _ in make_requests("fixed", num_requests, spec["vocab_size"])]
    cpu = not torch.cuda.is_available()
    base_threads = torch.get_num_threads()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp) / preset, arch, **spec)
        for tp in tps:
            runs.append(measure(model_dir, tp, 1 if cpu else None, prompts, max_tokens, repeats))
            if cpu and tp > 1:  # the same cores in one process
                runs.append(measure(model_dir, 1, tp, prompts, max_tokens, repeats))
    torch.set_num_threads(base_threads)
    reference = runs[0]  # tp=1, one thread per rank
    reference_tokens = reference["token_ids"]
    for run in runs:
        run["decode_speedup_vs_tp1"] = reference["decode_step_ms"] / run["decode_step_ms"]
        run["prefill_speedup_vs_tp1"] = reference["prefill_step_ms"] / run["prefill_step_ms"]
        run["same_greedy_tokens_as_tp1"] = run.pop("token_ids") == reference_tokens
        print(json.dumps(run))
    report = {
        "benchmark": "tensor_parallel",
        "device": device_name(torch.device("cuda" if not cpu else "cpu")) if not cpu else f"cpu-{platform.machine()}",
        "preset": preset,
        "workload": {"num_requests": num_requests, "prompt_len": prompt_len, "max_tokens": max_tokens, "repeats": repeats},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),  # other jobs sharing the cores skew CPU timings
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"tensor_parallel_{report['device']}_{preset}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
