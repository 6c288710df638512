"""The parts of scripts/gpu_check.py: what each runs (GPU and dry-run shapes), its time limit,
how its result is read, and its goals (met / not met; None in a dry run, where speed means nothing).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

# Prints the device and versions as JSON into argv[1]; run once after the install.
PROBE = """
import json, sys, platform
from importlib.metadata import version
import torch, bare_engine
from bare_engine.bench.throughput import device_name
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
json.dump({"device": device_name(device), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
           **{name: version(name) for name in ("triton", "transformers")},
           "python": platform.python_version(), "bare_engine": bare_engine.__file__}, open(sys.argv[1], "w"))
"""


@dataclass
class Part:
    name: str
    title: str
    limit_s: float  # on the GPU machine
    dry_limit_s: float  # generous: a dry run checks that the code runs; the budget bounds it
    gpu_args: list[str]
    dry_args: list[str]
    script: list[str]  # the command before its arguments; {python} is the interpreter
    collect: Callable[[Path], dict | None]
    goals: Callable[[dict, bool], list[dict]]
    collects_without_file: bool = False
    raw_flag: list[str] = field(default_factory=lambda: ["--output"])

    def extra_env(self, ctx, raw: Path) -> dict:
        return {}

    def limit(self, dry_run: bool) -> float:
        return self.dry_limit_s if dry_run else self.limit_s

    def command(self, ctx, raw: Path) -> list[str]:
        cmd = self.script + (self.dry_args if ctx.dry_run else self.gpu_args) + [*self.raw_flag, str(raw)]
        return [ctx.python if a == "{python}" else a.replace("{work}", str(ctx.work)) for a in cmd]


def goal(name: str, value, target: str, met: bool | None, dry_run: bool, speed: bool = True) -> dict:
    """A goal's line; speed goals are not judged in a dry run (CPU, tiny shapes)."""
    return {"name": name, "value": value, "target": target,
            "met": None if (dry_run and speed) or value is None or met is None else bool(met)}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- 1. CUDA tests


def cuda_test_files() -> list[str]:
    """Test files holding a CUDA-marked test (so collection never imports unrelated test modules)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))


def collect_test_log(path: Path) -> dict:
    """The JSON lines scripts/gpu_check_pytest.py wrote, one per finished test."""
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"tests": len(cases), **counts, "cases": cases}


def cuda_test_goals(r: dict, dry_run: bool) -> list[dict]:
    bad = r["failed"] + r["error"]
    return [goal("CUDA tests pass", f"{r['passed']}/{r['tests']} passed, {bad} failed, {r['skipped']} skipped",
                 "all pass, none skipped", bad == 0 and r["skipped"] == 0 and r["passed"] > 0, dry_run)]


class CudaTests(Part):
    """pytest -m cuda over the files that hold CUDA tests, across 4 processes when pytest-xdist is
    there (Triton compiles each kernel variant on the host: the part's largest cost)."""

    def command(self, ctx, raw: Path) -> list[str]:
        parallel = ["-n", "4"] if importlib.util.find_spec("xdist") and not ctx.dry_run else []
        return [ctx.python, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
                "-p", "gpu_check_pytest", "--continue-on-collection-errors", *parallel, *cuda_test_files()]

    def extra_env(self, ctx, raw: Path) -> dict:
        path = os.pathsep.join(filter(None, [str(ROOT / "scripts"), ctx.env.get("PYTHONPATH")]))
        return {"GPU_CHECK_TEST_LOG": str(raw), "PYTHONPATH": path}


# ----------------------------------------------------------------------------- 2. sampler


def sampling_goals(r: dict, dry_run: bool) -> list[dict]:
    row = max((c for c in r["cases"] if c["scenario"] == "filters"), key=lambda c: c["batch"] * c["vocab"])
    shape = f"batch {row['batch']} x vocab {row['vocab']}, all filters"
    return [
        goal(f"time vs one logits read at peak bandwidth ({shape})", row.get("triton_vs_read_peak"), "<= 2x",
             row.get("triton_vs_read_peak") is not None and row["triton_vs_read_peak"] <= 2, dry_run),
        goal(f"speedup vs sort-based torch sampler ({shape})", row["speedup_vs_sort"], ">= 5x",
             row["speedup_vs_sort"] >= 5, dry_run),
        goal("tokens equal the torch reference", row["tokens_equal_reference"], "1.0",
             row["tokens_equal_reference"] == 1.0, dry_run, speed=False),
    ]


# ----------------------------------------------------------------------------- 3. attention


def attention_goals(r: dict, dry_run: bool) -> list[dict]:
    row = max(r["decode"], key=lambda c: c["batch"] * c["context"])
    prefill = max(r["prefill"], key=lambda c: c.get("triton_TFLOPs", 0))
    return [
        goal(f"decode batch {row['batch']} x context {row['context']}: fraction of peak HBM bandwidth",
             row.get("triton_bw_fraction"), ">= 0.7",
             row.get("triton_bw_fraction") is not None and row["triton_bw_fraction"] >= 0.7, dry_run),
        goal(f"prefill TFLOP/s (batch {prefill['batch']} x context {prefill['context']}; report only)",
             prefill.get("triton_TFLOPs"), "report", None, dry_run),
    ]


# ----------------------------------------------------------------------------- 4. nano-vllm workload

NANOVLLM = {
    False: dict(preset="qwen3-0.6b", workload="nanovllm", num_requests=256,
                config=dict(max_num_seqs=256, max_num_batched_tokens=16384),
                decode=dict(batch=256, prompt_len=512, steps=32)),
    True: dict(preset="tiny", workload="smoke", num_requests=4, config=dict(max_num_seqs=4),
               decode=dict(batch=4, prompt_len=16, steps=4)),
}


def run_nanovllm(raw: Path, dry_run: bool, work: Path) -> None:
    from bare_engine.bench.throughput import preset_model_dir, run_throughput_benchmark
    from bare_engine.config import EngineConfig

    spec = NANOVLLM[dry_run]
    model_dir = preset_model_dir(spec["preset"], work / "models")
    path = run_throughput_benchmark(spec["preset"], [spec["workload"]], spec["num_requests"],
                                    EngineConfig(**spec["config"]), True, raw.parent / "nanovllm",
                                    model_dir=model_dir, decode=spec["decode"])
    raw.write_text(path.read_text())


def collect_nanovllm(raw: Path) -> dict | None:
    if raw.exists():
        return read_json(raw)
    partial = sorted((raw.parent / "nanovllm").glob("throughput_*.json"))  # written before the baseline ran
    return read_json(partial[0]) if partial else None


def nanovllm_goals(r: dict, dry_run: bool) -> list[dict]:
    row = r["results"][0]
    speedup = row.get("speedup_vs_transformers")
    step = r.get("decode_step", {})
    return [
        goal(f"engine output tok/s vs batched transformers generate ({row['num_requests']} requests)",
             None if speedup is None else round(speedup, 2), ">= 10x", speedup is not None and speedup >= 10, dry_run),
        goal(f"decode step (batch {step.get('batch')}) vs HBM roofline (weights + KV bytes / copy bandwidth)",
             step.get("step_vs_roofline"), "report (1.0 = at the roofline)", None, dry_run),
    ]


# ----------------------------------------------------------------------------- 5. BARE pipeline


def bare_goals(r: dict, dry_run: bool) -> list[dict]:
    speedup = r["speedup_interleaved_vs_phased"]
    return [goal("BARE interleaved vs phased", speedup, ">= 1.2x", speedup >= 1.2, dry_run),
            goal("interleaved and phased give the same records", r["same_records"], "true", r["same_records"],
                 dry_run, speed=False)]


# ----------------------------------------------------------------------------- 6. engine overhead


def overhead_goals(r: dict, dry_run: bool) -> list[dict]:
    overlap = r.get("async_scheduling") or {}
    return [goal(f"host time per step at {r['batch']} sequences (wall {r['step_ms_median']} ms; report only)",
                 r.get("host_ms_per_step"), "report", None, dry_run),
            goal("device busy fraction of a step (device kernel time / wall time; report only)",
                 r.get("device_busy_fraction"), "report", None, dry_run),
            goal(f"decode step time, synchronous / async scheduling ({overlap.get('sync_step_ms')} ms / "
                 f"{overlap.get('async_step_ms')} ms; report only)", overlap.get("async_speedup"), "report", None,
                 dry_run)]


WORKER_BODIES = {"nanovllm": run_nanovllm}
WORKERS = sorted(WORKER_BODIES)


def run_worker(name: str, raw: Path, dry_run: bool, work: Path) -> int:
    WORKER_BODIES[name](raw, dry_run, work)
    return 0


GPU_CHECK = str(ROOT / "scripts" / "gpu_check.py")

PARTS: list[Part] = [
    CudaTests("cuda_tests", "pytest -m cuda: compiled kernels, CUDA graphs, bf16 parity, backends", 80, 120,
              [], [], ["{python}", "-m", "pytest"], collect_test_log, cuda_test_goals),
    Part("sampling", "Triton sampler vs sort-based torch sampler", 30, 120,
         ["--batch", "256", "--vocab", "151936"], ["--batch", "2", "--vocab", "1000", "--scenario", "filters"],
         ["{python}", "benchmarks/sampling.py"], read_json, sampling_goals),
    Part("attention", "paged attention: decode bandwidth, prefill TFLOP/s", 30, 120,
         ["--decode-cases", "64x4096,256x1024", "--prefill-cases", "8x2048,1x8192"],
         ["--quick", "--decode-cases", "1x40", "--prefill-cases", "1x24"],
         ["{python}", "benchmarks/attention.py"], read_json, attention_goals),
    Part("nanovllm", "nano-vllm workload vs transformers; decode step vs roofline", 130, 120, [], ["--dry-run"],
         ["{python}", GPU_CHECK, "--worker", "nanovllm", "--work", "{work}"], collect_nanovllm, nanovllm_goals,
         collects_without_file=True, raw_flag=["--raw"]),
    Part("bare_pipeline", "BARE interleaved vs phased, Qwen3-0.6B-shaped pair", 80, 120,
         ["--preset", "qwen3-0.6b", "--num", "128", "--max-tokens", "128", "--max-num-seqs", "128"],
         ["--preset", "tiny", "--num", "4", "--max-tokens", "8", "--max-num-seqs", "4", "--threads", "1"],
         ["{python}", "benchmarks/bare_pipeline.py"], read_json, bare_goals),
    Part("step_overhead", "host vs device time per decode step, 256 sequences; async scheduling off vs on", 44, 120,
         ["--preset", "qwen3-0.6b", "--model-root", "{work}/models", "--batch", "256", "--prompt-len", "512",
          "--steps", "20", "--profile-steps", "8", "--overlap-steps", "16"],
         ["--preset", "tiny", "--model-root", "{work}/models", "--batch", "4", "--prompt-len", "16",
          "--steps", "4", "--profile-steps", "2", "--overlap-steps", "3"],
         ["{python}", "benchmarks/decode_step.py"], read_json, overhead_goals),
]
