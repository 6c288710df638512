"""What a sampling step costs: the sampler with top-nσ on every row vs the same sampler alone.

    python benchmarks/sampling_steps.py          # GPU: Triton sampler + Triton step; CPU: torch reference
    python benchmarks/sampling_steps.py --batch 64 --vocab 151936

Both timings come from the same run, on the same logits and parameters (scenarios as in
benchmarks/sampling.py: "temperature" is plain sampling at 0.8, "filters" adds top-k,
top-p, min-p and penalties). "with_step" is ``sample_with_steps`` with
``{"top_n_sigma": 1.0}`` on every row: penalties and temperature for those rows in torch,
the step (the Triton kernel on GPU, the torch reference on CPU), then the same fused draw
over the filtered logits; "step_only" times the step alone. Medians over repeated calls.
On a CPU the numbers are the torch reference sampler's (the engine's CPU path), labelled so;
there a step that keeps few tokens can make the whole call cheaper than the sampler alone,
since the reference draws noise only for the kept tokens when they are few.
Results go to benchmarks/results/sampling_steps_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sampling import SCENARIOS, make_inputs  # noqa: E402  (benchmarks/sampling.py; sets TRITON_INTERPRET on CPU)

from bare_engine.bench.throughput import device_name  # noqa: E402
from bare_engine.kernels import sampling_ref as ref  # noqa: E402
from bare_engine.sample.sampling_steps import get_step, sample_with_steps  # noqa: E402

STEP = {"top_n_sigma": 1.0}
GPU = {"batch": [1, 32, 128, 256], "vocab": [32000, 151936]}
CPU = {"batch": [1, 8, 32], "vocab": [32000, 128256]}


def median_ms(fn, device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_case(impl, use_kernel: bool, batch: int, vocab: int, scenario: str, device, reps: int) -> dict:
    logits, params, state = make_inputs(batch, vocab, SCENARIOS[scenario], device)
    ref.validate_sampling_tensors(logits, params, state)
    steps = [dict(STEP)] * batch
    base_ms = median_ms(lambda: impl.sample(logits, params, state, validate=False), device, reps)
    with_ms = median_ms(lambda: sample_with_steps(impl, logits, params, state, None, steps, use_kernel=use_kernel),
                        device, reps)
    z = ref.scaled_logits(ref.penalized_logits(logits, params, state), params)
    n = torch.full((batch,), STEP["top_n_sigma"], device=device)
    step_ms = median_ms(lambda: get_step("top_n_sigma").apply(z, n, use_kernel), device, reps)
    return dict(scenario=scenario, batch=batch, vocab=vocab, sampler_ms=_sig(base_ms), with_step_ms=_sig(with_ms),
                step_only_ms=_sig(step_ms), with_step_vs_sampler=_sig(with_ms / base_ms),
                step_only_vs_sampler=_sig(step_ms / base_ms))


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+")
    parser.add_argument("--vocab", type=int, nargs="+")
    parser.add_argument("--reps", type=int, default=7, help="timed calls per case on CPU (median)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        from bare_engine.kernels import sampling as impl
        backend, use_kernel, sweep = "triton sampler + triton top_n_sigma kernel", True, GPU
    else:
        impl, backend, use_kernel, sweep = ref, "torch reference sampler + torch top_n_sigma (CPU)", False, CPU
    sweep = {**sweep, **{k: getattr(args, k) for k in ("batch", "vocab") if getattr(args, k)}}
    name = device_name(device)
    report = dict(device=name, backend=backend, torch=torch.__version__, threads=torch.get_num_threads(),
                  step=STEP, scenarios=SCENARIOS, cases=[])
    for scenario in SCENARIOS:
        for vocab in sweep["vocab"]:
            for batch in sweep["batch"]:
                row = run_case(impl, use_kernel, batch, vocab, scenario, device, args.reps)
                report["cases"].append(row)
                print(json.dumps(row), flush=True)
    for key in ("with_step_vs_sampler", "step_only_vs_sampler"):
        report[f"median_{key}"] = _sig(statistics.median(c[key] for c in report["cases"]))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    path = args.out / f"sampling_steps_{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"median with_step / sampler: {report['median_with_step_vs_sampler']}x, step alone / sampler: "
          f"{report['median_step_only_vs_sampler']}x; wrote {path}")


if __name__ == "__main__":
    main()
