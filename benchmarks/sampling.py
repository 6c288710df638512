"""Benchmark the Triton sampler against a sort-based torch sampler.

    python benchmarks/sampling.py            # GPU: batch 1-512, vocab 32k / 128k / 152k
    python benchmarks/sampling.py --quick    # tiny smoke run; on CPU (Triton interpreter) always this
    python benchmarks/sampling.py --batch 256 --vocab 151936   # one shape (scripts/gpu_check.sh)

The baseline is the torch path of vLLM / transformers: penalties from dense counts,
temperature, min-p, then one full sort for top-k and top-p (cumulative sum over the
sorted probabilities), softmax and an exponential race. Scenario "filters" turns
everything on (temperature 0.8, top_k 50, top_p 0.9, min_p 0.05, repetition 1.1,
frequency 0.2, presence 0.1, each row with a 256-token prompt and 64 output tokens);
"temperature" is plain temperature sampling (the baseline skips its sort there).
Each row reports both times, the speedup over the baseline measured in the same run,
and on GPU the time of one float32 read of the logits at the device's peak bandwidth
and as measured (a row max). Validation is outside the timed calls.
Results go to benchmarks/results/sampling_<device>[_quick].json (sampling_cpu.json on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import triton  # noqa: E402

from bare_engine.kernels import sampling as tri  # noqa: E402
from bare_engine.bench.throughput import device_name, peak_bandwidth  # noqa: E402
from bare_engine.kernels import sampling_ref as ref  # noqa: E402

# (substring of torch.cuda.get_device_name(), peak bytes/s); the first match wins.
FULL = {"batch": [1, 8, 32, 128, 256, 512], "vocab": [32000, 128256, 151936]}
QUICK = {"batch": [1, 4], "vocab": [1000, 5000]}
SCENARIOS = {
    "filters": dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                    frequency_penalty=0.2, presence_penalty=0.1),
    "temperature": dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                        frequency_penalty=0.0, presence_penalty=0.0),
}



def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up: compile / first-call costs stay out of the timing
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def make_inputs(batch: int, vocab: int, scenario: dict, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen, device=device) * 3
    params = ref.SamplingTensors(
        **{name: torch.full((batch,), float(value), device=device) for name, value in scenario.items()
           if name != "top_k"},
        top_k=torch.full((batch,), scenario["top_k"], dtype=torch.int32, device=device),
        seed=torch.randint(0, 2**62, (batch,), generator=gen, device=device),
        position=torch.full((batch,), 64, dtype=torch.int64, device=device),
        penalty_rows=torch.arange(batch, device=device),
    )
    state = ref.PenaltyState(batch, vocab, device)
    for row in range(batch):
        history = torch.randint(0, vocab, (320,), generator=gen, device=device)
        state.reset_row(row, history[:256], history[256:])
    return logits, params, state


def sort_baseline(logits: torch.Tensor, p: ref.SamplingTensors, state: ref.PenaltyState,
                  filters: bool) -> torch.Tensor:
    """The usual torch sampler: dense penalties, min-p, a full sort for top-k/top-p, exponential race."""
    x = logits.float()
    counts = state.counts[p.penalty_rows]
    seen = state.prompt_mask[p.penalty_rows] | (counts > 0)
    rep = p.repetition_penalty[:, None]
    x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
    x = x - p.frequency_penalty[:, None] * counts - p.presence_penalty[:, None] * (counts > 0)
    greedy = p.temperature == 0
    x = x / torch.where(greedy, 1.0, p.temperature)[:, None]
    if filters:
        probs = x.softmax(dim=-1)
        x = x.masked_fill(probs < p.min_p[:, None] * probs.amax(dim=-1, keepdim=True), -math.inf)
        x_sorted, order = x.sort(dim=-1, descending=False)
        vocab = x.shape[1]
        k = torch.where(p.top_k > 0, p.top_k.long(), vocab).clamp(max=vocab)
        kth = x_sorted.gather(1, (vocab - k)[:, None])
        x_sorted = x_sorted.masked_fill(x_sorted < kth, -math.inf)
        cumulative = x_sorted.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - p.top_p[:, None]
        drop[:, -1] = False
        x = torch.empty_like(x).scatter_(1, order, x_sorted.masked_fill(drop, -math.inf))
    probs = x.softmax(dim=-1)
    race = probs / torch.empty_like(probs).exponential_()
    return torch.where(greedy, x.argmax(dim=-1), race.argmax(dim=-1))


def run_case(batch: int, vocab: int, scenario: str, device: torch.device, peak: float | None) -> dict:
    logits, params, state = make_inputs(batch, vocab, SCENARIOS[scenario], device)
    tri.validate_sampling_tensors(logits, params, state)
    triton_ms = time_ms(lambda: tri.sample(logits, params, state, validate=False), device)
    sort_ms = time_ms(lambda: sort_baseline(logits, params, state, scenario == "filters"), device)
    same = tri.sample(logits, params, state).token_ids == ref.sample(logits, params, state).token_ids
    read_bytes = batch * vocab * 4
    row = dict(scenario=scenario, batch=batch, vocab=vocab, triton_ms=_sig(triton_ms), sort_ms=_sig(sort_ms),
               speedup_vs_sort=_sig(sort_ms / triton_ms), tokens_equal_reference=_sig(float(same.float().mean())),
               triton_effective_GBps=_sig(read_bytes / triton_ms / 1e6))  # as if it read the logits once
    if device.type == "cuda":
        measured = time_ms(lambda: logits.amax(dim=1), device)
        row.update(read_measured_ms=_sig(measured), triton_vs_read_measured=_sig(triton_ms / measured))
        if peak:
            read_ms = read_bytes / peak * 1e3
            row.update(read_peak_ms=_sig(read_ms), triton_vs_read_peak=_sig(triton_ms / read_ms))
    return row


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, runs on CPU through the Triton interpreter")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="run one scenario only")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: the sweep's)")
    parser.add_argument("--vocab", type=int, nargs="+", help="vocabulary sizes (default: the sweep's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--output", type=Path, help="JSON file (default: sampling_<device>.json under --out)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"  # the interpreter is far too slow for real sizes
    sweep = {**(QUICK if quick else FULL), **{k: getattr(args, k) for k in ("batch", "vocab") if getattr(args, k)}}
    name = device_name(device)
    report = {
        "device": name,
        "peak_bandwidth_Bps": peak_bandwidth(name),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "triton_interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        "scenarios": SCENARIOS,
        "cases": [],
    }
    for scenario in [args.scenario] if args.scenario else list(SCENARIOS):
        for vocab in sweep["vocab"]:
            for batch in sweep["batch"]:
                row = run_case(batch, vocab, scenario, device, report["peak_bandwidth_Bps"])
                report["cases"].append(row)
                print(json.dumps(row), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    path = args.output or args.out / f"sampling_{slug}{'_quick' if quick and device.type == 'cuda' else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
