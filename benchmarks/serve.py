"""The server's overhead: `bare-engine serve` under a bounded load vs the same requests offline.

    OMP_NUM_THREADS=1 python benchmarks/serve.py                       # the demo pair, CPU
    python benchmarks/serve.py --base DIR --instruct DIR --max-tokens 256 --num-kv-blocks 16384   # GPU

Half the requests are the paper's base calls (a few-shot prompt to /v1/completions), half its
refine calls (one user message to /v1/chat/completions), seeded, ``ignore_eos`` so every
request makes exactly ``max_tokens`` tokens. At each concurrency (1, 16, 64) a closed loop of
AsyncOpenAI clients (streaming, to see the time to first token) keeps that many requests in
flight against a `bare-engine serve` child process; then one engine in this process runs the
same requests with the same number in flight (a closed loop over LLMEngine.step(), which is
what LLM.generate drives), and once more all at once as LLM.generate would. Both sides use the
same engine flags; the ratios are server / offline. The seeded texts must be equal.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from bare_engine import EngineConfig, LLMEngine, SamplingParams
from bare_engine.bench.throughput import device_name
from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR, load_seeds
from bare_engine.pipeline.templates import DEFAULT_TASK, Templates
from bare_engine.serve import engine_view
from bare_engine.serve.launch import ServerProcess
from bare_engine.serve.models import ServedModel

RESULTS = Path(__file__).parent / "results"
TEMPERATURE = 0.7


def process_cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) of a process: steadier than wall time on a shared CPU."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Request:
    index: int
    model: str  # "base": completions, "instruct": chat
    prompt: str | list[dict]
    seed: int


def make_requests(num: int, k: int = 3) -> list[Request]:
    seeds = [{"question": s["question"], "answer": s["answer"]} for s in load_seeds()]
    templates, requests = Templates(), []
    for i in range(num):
        shots = [seeds[(i + j) % len(seeds)] for j in range(k)]
        if i % 2 == 0:
            requests.append(Request(i, "base", templates.base(DEFAULT_TASK, shots), seed=i))
        else:
            candidate = seeds[(i + k) % len(seeds)]
            message = templates.refine(DEFAULT_TASK, shots, candidate)
            requests.append(Request(i, "instruct", [{"role": "user", "content": message}], seed=i))
    return requests


def summary(latencies: list[float], ttfts: list[float], tokens: int, wall: float, cpu: float | None) -> dict:
    def pct(values, q):
        return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4) if len(values) > 1 else \
            round(values[0], 4)

    return {
        "requests": len(latencies), "wall_s": round(wall, 3), "output_tokens": tokens,
        "requests_per_s": round(len(latencies) / wall, 3), "output_tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": pct(latencies, 50), "latency_p99_s": pct(latencies, 99),
        "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99),
        "cpu_s": None if cpu is None else round(cpu, 3),
        "cpu_ms_per_output_token": None if cpu is None else round(1000 * cpu / tokens, 3),
    }


# ----- the server side ------------------------------------------------------------------

async def _one_server_request(client, req: Request, max_tokens: int) -> dict:
    kw = dict(model=req.model, max_tokens=max_tokens, temperature=TEMPERATURE, seed=req.seed, stream=True,
              stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    start = time.perf_counter()
    if req.model == "base":
        stream = await client.completions.create(prompt=req.prompt, **kw)
    else:
        stream = await client.chat.completions.create(messages=req.prompt, **kw)
    first, parts, tokens = None, [], 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text = choice.text if req.model == "base" else (choice.delta.content or "")
        if text:
            first = first or time.perf_counter()
            parts.append(text)
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens, "text": "".join(parts)}


async def _server_level(server: ServerProcess, requests: list[Request], concurrency: int, max_tokens: int,
                        timeout: float) -> tuple[dict, list[str]]:
    """``concurrency`` streaming clients; CPU time is the server process's own."""
    from openai import AsyncOpenAI

    gate = asyncio.Semaphore(concurrency)

    async def bounded(client, req):
        async with gate:
            return await _one_server_request(client, req, max_tokens)

    async with AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=timeout) as client:
        cpu, start = process_cpu_s(server.proc.pid), time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(bounded(client, r) for r in requests)), timeout)
        wall, cpu_end = time.perf_counter() - start, process_cpu_s(server.proc.pid)
    stats = summary([r["latency"] for r in results], [r["ttft"] for r in results],
                    sum(r["tokens"] for r in results), wall, None if cpu is None else cpu_end - cpu)
    return stats, [r["text"] for r in results]


# ----- the offline side -----------------------------------------------------------------

def _offline_level(engine, requests: list[Request], prompts: dict[int, list[int]], concurrency: int,
                   max_tokens: int) -> tuple[dict, list[str]]:
    """A closed loop over the engine keeping ``concurrency`` requests in flight."""
    pending, in_flight, texts = deque(requests), {}, {}
    latencies, ttfts, tokens = [], [], 0
    cpu, start = process_cpu_s(), time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < concurrency:
            req = pending.popleft()
            params = SamplingParams(temperature=TEMPERATURE, max_tokens=max_tokens, seed=req.seed, ignore_eos=True)
            engine.add_request(str(req.index), prompts[req.index], params, model=req.model)
            in_flight[str(req.index)] = [time.perf_counter(), None]
        finished = engine.step()
        now = time.perf_counter()
        for out in finished:
            began, first = in_flight.pop(out.request_id)
            latencies.append(now - began)
            ttfts.append((first or now) - began)
            tokens += len(out.outputs[0].token_ids)
            texts[int(out.request_id)] = out.outputs[0].text
        for request_id, times in in_flight.items():
            if times[1] is None and engine_view.request_progress(engine, request_id, [0])[0].num_output_tokens:
                times[1] = now
    wall, cpu = time.perf_counter() - start, process_cpu_s() - cpu
    return summary(latencies, ttfts, tokens, wall, cpu), [texts[r.index] for r in requests]


def _prompt_ids(engine, requests: list[Request]) -> dict[int, list[int]]:
    """Token ids exactly as the server makes them from the same bodies."""
    served = {name: ServedModel.from_engine(engine, name) for name in engine.model_names}
    return {r.index: served[r.model].encode(r.prompt) if r.model == "base" else served[r.model].encode_chat(r.prompt)
            for r in requests}


def _ratios(server: dict, offline: dict) -> dict:
    ratios = {
        "output_tokens_per_s": round(server["output_tokens_per_s"] / offline["output_tokens_per_s"], 3),
        "latency_p50": round(server["latency_p50_s"] / offline["latency_p50_s"], 3),
        "ttft_p50": round(server["ttft_p50_s"] / offline["ttft_p50_s"], 3),
    }
    if server["cpu_s"] is not None:
        ratios["cpu_per_output_token"] = round(server["cpu_ms_per_output_token"] / offline["cpu_ms_per_output_token"], 3)
    return ratios


def median_of(runs: list[dict]) -> dict:
    """Each numeric field's median over the repeats."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = values[0] if any(v is None for v in values) else round(statistics.median(values), 4)
    out["repeats"] = len(runs)
    return out


def _label(path: str) -> str:
    bundled = {Path(BASE_MODEL_DIR): "bundled demo base", Path(INSTRUCT_MODEL_DIR): "bundled demo instruct"}
    return bundled.get(Path(path), path)


@click.command()
@click.option("--base", type=click.Path(exists=True), default=str(BASE_MODEL_DIR), show_default="the demo base")
@click.option("--instruct", type=click.Path(exists=True), default=str(INSTRUCT_MODEL_DIR),
              show_default="the demo instruct")
@click.option("--concurrency", default="1,16,64", show_default=True, help="Comma-separated levels.")
@click.option("--requests-per-level", "per_level", type=int, default=0,
              help="Requests at each level (default: max(8, concurrency)).")
@click.option("--max-tokens", type=int, default=32, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True, help="Runs per level and side (medians).")
@click.option("--num-kv-blocks", type=int, default=2048, show_default=True)
@click.option("--max-num-seqs", type=int, default=64, show_default=True)
@click.option("--max-model-len", type=int, default=1024, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds allowed per level and side.")
@click.option("--out", "out_dir", type=click.Path(), default=str(RESULTS), show_default=True)
def main(base, instruct, concurrency, per_level, max_tokens, repeats, num_kv_blocks, max_num_seqs, max_model_len, timeout,
         out_dir):
    levels = [int(c) for c in concurrency.split(",")]
    flags = ["--num-kv-blocks", str(num_kv_blocks), "--max-num-seqs", str(max_num_seqs),
             "--max-model-len", str(max_model_len)]
    config = EngineConfig(num_kv_blocks=num_kv_blocks, max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    engine = LLMEngine({"base": base, "instruct": instruct}, config)
    warmup = make_requests(4)
    results = []
    with ServerProcess(["--base", base, "--instruct", instruct, "--port", "0", "--log-level", "warning",
                        "--max-waiting", "4096", *flags]) as server:
        asyncio.run(_server_level(server, warmup, 4, 4, timeout))
        _offline_level(engine, warmup, _prompt_ids(engine, warmup), 4, 4)
        for level in levels:
            requests = make_requests(per_level or max(8, level))
            prompts = _prompt_ids(engine, requests)
            served_runs, offline_runs, same = [], [], 0
            for _ in range(repeats):  # alternating, so that a noisy neighbour hits both sides alike
                served, served_texts = asyncio.run(_server_level(server, requests, level, max_tokens, timeout))
                offline, offline_texts = _offline_level(engine, requests, prompts, level, max_tokens)
                served_runs.append(served)
                offline_runs.append(offline)
                same += sum(a == b for a, b in zip(served_texts, offline_texts))
            served, offline = median_of(served_runs), median_of(offline_runs)
            generate, _ = _offline_level(engine, requests, prompts, len(requests), max_tokens)
            results.append({"concurrency": level, "server": served, "offline_same_concurrency": offline,
                            "offline_generate_all": generate, "server_over_offline": _ratios(served, offline),
                            "identical_texts": f"{same}/{len(requests) * repeats}"})
            ratios = results[-1]["server_over_offline"]
            click.echo(f"concurrency {level:3d}: server {served['output_tokens_per_s']:8.1f} tok/s, "
                       f"offline {offline['output_tokens_per_s']:8.1f} tok/s (ratio {ratios['output_tokens_per_s']:.2f}, "
                       f"CPU per token {ratios.get('cpu_per_output_token')}), "
                       f"identical texts {same}/{len(requests) * repeats}")
    device = engine.device
    out = Path(out_dir) / f"serve_{device_name(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "serve", "device": device_name(device), "torch_threads": torch.get_num_threads(),
        "models": {"base": _label(base), "instruct": _label(instruct)}, "max_tokens": max_tokens,
        "temperature": TEMPERATURE, "repeats": repeats,
        "engine": {"num_kv_blocks": num_kv_blocks, "max_num_seqs": max_num_seqs, "max_model_len": max_model_len},
        "levels": results,
    }, indent=2) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
