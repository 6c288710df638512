"""Host overhead of one engine step, with the model and the sampling maths stubbed out.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py                     # all cases, this tree
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --baseline-rev HEAD~3   # plus an older commit, same run
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --async-scheduling both  # overlapped steps off and on
    OMP_NUM_THREADS=1 python benchmarks/overhead.py --repeats 3 --baseline-rev REV  # medians of 3 turns each

The forward pass returns preallocated hidden states and the logits head returns one of a few
preallocated random logit tensors of the right shape ([tokens, hidden], [rows, vocab]); the
sampling kernels return preallocated tokens / logprobs of the right shape, and the penalty
statistics are no-ops. What is left, and timed, is the engine's own work: scheduling, block
allocation, input preparation, sampling-parameter packing, output processing, stop checks,
detokenization and request bookkeeping. The greedy path's ``argmax`` over the logits is
sampling maths too (one kernel on a GPU, ~1.3 us per row on this CPU): the stub logits answer
it with precomputed tokens, so the engine's own call and the tensor it gets back still count.

Each case fills the engine with ``seqs`` sequences, warms up, then times single steps
(median CPU time of the process, in microseconds per sequence in the step: unlike wall time it
is not inflated by other jobs on the cores; wall time is reported too; in the mixed case the
step includes add_request for the new prompts) and profiles more steps with cProfile
(the top functions by own time, in microseconds per sequence per step).
``--baseline-rev REV`` extracts REV's ``bare_engine`` and ``kernels`` into a temporary
directory and runs the same cases against it in a subprocess, so both sets of numbers come
from one run on the same machine; the report gives their ratio. ``--async-scheduling both``
runs each case with overlapped steps (engine/steps.py) off and on: on a CPU nothing overlaps, so this
measures the overlapped loop's own host cost (the gain needs a GPU: benchmarks/decode_step.py).
Results: benchmarks/results/overhead_<device>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
SIZES = (64, 256, 1024)
CASES = ("greedy", "sampled", "stop_strings", "n4", "logprobs5", "prefill_mixed")
STOP = ["<END>", "\n\n\n"]  # never produced by the stub tokens' text, so sequences keep running
PROMPT_LEN = 32
NUM_SPECIAL = 7  # the test tokenizer's special tokens (ids 0..6) are never produced


class StubLogits(torch.Tensor):
    """Stub logits whose ``argmax`` is precomputed (``tokens``): no compute, same output."""

    tokens: torch.Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.argmax:
            return args[0].tokens
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class StubModel:
    """Same call signature and output shapes as CausalLM; no compute."""

    def __init__(self, hidden_size: int, vocab: int, max_tokens: int, rows: int, banks: int = 8, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.hidden = torch.zeros(max_tokens, hidden_size)
        self.logits = [torch.randn(rows, vocab, generator=gen) for _ in range(banks)]
        for bank in self.logits:
            bank[:, :NUM_SPECIAL] = float("-inf")
        self.tokens = [bank.argmax(dim=-1) for bank in self.logits]
        self.top_ids = [bank.topk(8, dim=-1).indices for bank in self.logits]
        self.step = 0
        self.num_seqs = 0  # sequences in the last forward pass
        self.num_tokens = 0

    def __call__(self, input_ids, positions, kv_caches, backend, meta):
        self.step += 1
        self.num_tokens = input_ids.shape[0]
        self.num_seqs = meta.context_lens.shape[0]
        return self.hidden[: self.num_tokens]

    def compute_logits(self, hidden):
        bank, rows = self.step % len(self.logits), hidden.shape[0]
        logits = self.logits[bank][:rows].as_subclass(StubLogits)
        logits.tokens = self.tokens[bank][:rows]
        return logits


class StubPenalties:
    def __init__(self, *args, **kwargs):
        pass

    def reset_row(self, *args, **kwargs):
        pass

    def add_tokens(self, *args, **kwargs):
        pass


def stub_sampling_impl(stub: StubModel):
    from bare_engine.kernels import sampling_ref

    def sample(logits, params, penalties=None, num_logprobs=None, validate=True):
        rows = logits.shape[0]
        bank = stub.step % len(stub.logits)
        tokens = stub.tokens[bank][:rows]
        if num_logprobs is None:
            return sampling_ref.SampleResult(tokens, None, None, None)
        chosen = torch.zeros(rows)
        top_ids = stub.top_ids[bank][:rows, :num_logprobs]
        return sampling_ref.SampleResult(tokens, chosen, top_ids, torch.zeros(rows, num_logprobs))

    return SimpleNamespace(sample=sample, SamplingTensors=sampling_ref.SamplingTensors, PenaltyState=StubPenalties,
                           SampleResult=sampling_ref.SampleResult)


def case_params(case: str, rng: random.Random):
    from bare_engine.sampling_params import SamplingParams

    if case == "greedy":
        return SamplingParams(temperature=0.0, max_tokens=None)
    if case == "stop_strings":
        return SamplingParams(temperature=0.0, max_tokens=None, stop=STOP)
    if case == "logprobs5":
        return SamplingParams(temperature=0.0, max_tokens=None, logprobs=5)
    if case == "n4":
        return SamplingParams(n=4, temperature=0.8, top_p=0.95, seed=rng.randrange(1 << 30), max_tokens=None)
    if case == "sampled":
        return SamplingParams(
            temperature=rng.uniform(0.5, 1.2), top_p=rng.choice([1.0, 0.9, 0.95]), top_k=rng.choice([-1, 20, 50]),
            min_p=rng.choice([0.0, 0.05]), presence_penalty=rng.choice([0.0, 0.0, 0.5]),
            seed=rng.randrange(1 << 30), max_tokens=None,
        )
    if case == "prefill_mixed":  # sequences finish and are replaced by new prompts, prefilled in chunks
        return SamplingParams(temperature=0.0, max_tokens=rng.randint(24, 96), stop=STOP)
    raise ValueError(case)


class Case:
    def __init__(self, model_dir: Path, case: str, seqs: int, seed: int = 0, overlapped: bool = False):
        from bare_engine.config import EngineConfig
        from bare_engine.engine.llm_engine import LLMEngine

        self.case, self.seqs = case, seqs
        self.rng = random.Random(seed)
        mixed = case == "prefill_mixed"
        self.prompt_len = 256 if mixed else PROMPT_LEN
        config = EngineConfig(
            max_num_seqs=seqs, max_num_batched_tokens=seqs + (512 if mixed else self.prompt_len * seqs),
            num_kv_blocks=seqs * 2 * (1024 // 16) // 2 + 64, block_size=16, max_model_len=1024,
            enforce_eager=True, device="cpu", dtype="float32", enable_prefix_caching=True,
            **({"async_scheduling": True} if overlapped else {}),  # omitted: older trees lack the option
        )
        self.engine = LLMEngine(model_dir, config)
        runner = self.engine.runners["default"]
        cfg = runner.config
        self.stub = StubModel(cfg.hidden_size, cfg.vocab_size, config.max_num_batched_tokens + seqs, seqs)
        runner.model = self.stub
        runner.sampler._impl = stub_sampling_impl(self.stub)
        self.next_id = 0
        # Requests are made up front: only add_request itself counts as the engine's work.
        self.pool = [([self.rng.randrange(NUM_SPECIAL, 400) for _ in range(self.prompt_len)],
                      case_params(self.case, self.rng)) for _ in range(2 * seqs if mixed else seqs)]
        self.fill()

    def fill(self) -> None:
        """Keep `seqs` sequences running, plus a few waiting prompts in the mixed case."""
        target = self.seqs + (self.seqs // 8 if self.case == "prefill_mixed" else 0)
        n = 4 if self.case == "n4" else 1
        while self.engine.num_unfinished_requests() * n < target:
            prompt, params = self.pool[self.next_id % len(self.pool)]
            self.engine.add_request(f"r{self.next_id}", prompt, params)
            self.next_id += 1

    def step(self) -> None:
        self.engine.step()
        if self.case == "prefill_mixed":
            self.fill()

    def warm_up(self) -> None:
        # Until every sequence has its prompt in the cache and decodes (the mixed case keeps prefilling).
        for _ in range(200):
            self.step()
            if self.stub.num_seqs == self.seqs and (self.case == "prefill_mixed" or self.stub.num_tokens == self.seqs):
                break
        for _ in range(3):
            self.step()


def measure(model_dir: Path, case: str, seqs: int, steps: int, profile_steps: int, overlapped: bool = False) -> dict:
    bench = Case(model_dir, case, seqs, overlapped=overlapped)
    bench.warm_up()
    gc.collect()  # the previous case's engine, so that collecting it is not timed here
    per_seq, cpu_per_seq, tokens = [], [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        bench.step()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        per_seq.append(elapsed / bench.stub.num_seqs * 1e6)
        cpu_per_seq.append(cpu / bench.stub.num_seqs * 1e6)
        tokens.append(bench.stub.num_tokens)
    profiler = cProfile.Profile()
    counted = 0
    profiler.enable()
    for _ in range(profile_steps):
        bench.step()
        counted += bench.stub.num_seqs
    profiler.disable()
    return {
        "case": case, "seqs": seqs, "steps": steps, "async_scheduling": overlapped,
        "us_per_seq_step": statistics.median(cpu_per_seq),
        "wall_us_per_seq_step": statistics.median(per_seq),
        "wall_us_per_seq_step_p90": sorted(per_seq)[int(0.9 * (len(per_seq) - 1))],
        "mean_tokens_per_step": statistics.mean(tokens),
        "profile_top": profile_top(profiler, counted),
    }


def profile_top(profiler: cProfile.Profile, counted_seqs: int, top: int = 12) -> list[dict]:
    """Functions by own time, in us per sequence per step (cProfile inflates small Python calls)."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, own, cum, _) in stats.stats.items():
        where = f"{Path(file).parent.name}/{Path(file).name}:{func}" if file != "~" else func
        rows.append({"function": where, "calls": calls, "own_us": own / counted_seqs * 1e6,
                     "cum_us": cum / counted_seqs * 1e6})
    rows.sort(key=lambda r: -r["own_us"])
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[:top]]


def run_cases(cases, sizes, steps, profile_steps, modes=(False,)) -> list[dict]:
    from bare_engine.testing import make_model_dir

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp) / "m", "llama", hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=1024)
        for case in cases:
            for seqs in sizes:
                for overlapped in modes:
                    row = measure(model_dir, case, seqs, steps, profile_steps, overlapped)
                    print(f"{case:>14} {seqs:>5} seqs{' async' if overlapped else ''}: "
                          f"{row['us_per_seq_step']:7.2f} us/seq/step", file=sys.stderr)
                    results.append(row)
    return results


def compare_modes(results: list[dict]) -> None:
    """The overlapped loop's host cost against the synchronous one's, where both ran."""
    sync = {(r["case"], r["seqs"]): r["us_per_seq_step"] for r in results if not r["async_scheduling"]}
    for row in results:
        if row["async_scheduling"] and (row["case"], row["seqs"]) in sync:
            row["sync_vs_async_cpu_time"] = sync[(row["case"], row["seqs"])] / row["us_per_seq_step"]


def median_of_repeats(runs: list[list[dict]]) -> list[dict]:
    """The first run's rows with ``us_per_seq_step`` the median over the runs (each run's value kept)."""
    merged = []
    for rows in zip(*runs):
        row = dict(rows[0])
        values = [r["us_per_seq_step"] for r in rows]
        row["us_per_seq_step"] = statistics.median(values)
        row["repeats_us_per_seq_step"] = values
        merged.append(row)
    return merged


def baseline_tree(rev: str, into: Path) -> Path:
    """REV's bare_engine package with kernels/ mapped inside it, as the installed layout has it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "bare_engine", "kernels"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "kernels").rename(into / "bare_engine" / "kernels")
    return into


def run_baseline(rev: str, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = baseline_tree(rev, Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(tree))
        cmd = [sys.executable, __file__, "--json-only", "--steps", str(args.steps), "--profile-steps",
               str(args.profile_steps), "--cases", *args.cases, "--sizes", *map(str, args.sizes)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=3600).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--baseline-rev", help="git revision to measure in the same run, as the baseline")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--async-scheduling", choices=["off", "on", "both"], default="off",
                        help="overlapped steps in this tree's cases (the baseline runs synchronous steps)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure every case this many times (alternating with the baseline); report medians")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.json_only:
        print(json.dumps(run_cases(args.cases, args.sizes, args.steps, args.profile_steps)))
        return
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.async_scheduling]
    runs, baseline_runs = [], []
    for _ in range(args.repeats):  # this tree and the baseline take turns, so drifts in the machine hit both
        if args.baseline_rev:
            baseline_runs.append(run_baseline(args.baseline_rev, args))
        runs.append(run_cases(args.cases, args.sizes, args.steps, args.profile_steps, modes))
    results = median_of_repeats(runs)
    baseline = median_of_repeats(baseline_runs) if baseline_runs else None
    compare_modes(results)
    if baseline:
        by_key = {(b["case"], b["seqs"]): b for b in baseline}
        for row in results:
            base = by_key.get((row["case"], row["seqs"]))
            if base:
                row["baseline_us_per_seq_step"] = base["us_per_seq_step"]
                row["speedup_vs_baseline"] = base["us_per_seq_step"] / row["us_per_seq_step"]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {
        "benchmark": "overhead",
        "unit": "microseconds of host CPU time (process time) per sequence per engine step, median over steps "
                "(and over --repeats runs); "
                "wall_us_* is wall-clock time, which other jobs on the cores inflate",
        "device": f"cpu-{torch.get_num_threads()}threads",
        "commit": commit, "baseline_rev": args.baseline_rev,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "results": results, "baseline_results": baseline,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overhead_{report['device']}{args.tag}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    summary = [{k: r.get(k) for k in ("case", "seqs", "async_scheduling", "us_per_seq_step",
                                      "baseline_us_per_seq_step", "speedup_vs_baseline", "sync_vs_async_cpu_time")}
               for r in results]
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
