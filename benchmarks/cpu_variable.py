"""CPU end to end: the engine vs transformers ``generate`` on issue 13's variable-length workload.

    OMP_NUM_THREADS=2 python benchmarks/cpu_variable.py
    OMP_NUM_THREADS=2 python benchmarks/cpu_variable.py --baseline-rev REV   # also an older engine
    OMP_NUM_THREADS=2 python benchmarks/cpu_variable.py --repeats 3          # median of 3 alternating turns

A 6-layer, 384-wide Llama (random weights), 64 requests with prompts of 16-256 and outputs of
16-128 tokens (greedy, ignore_eos), transformers in static batches of 32 and the engine with
``max_num_seqs`` 32. Both sides are timed in this run, with the same thread count; the engine
and transformers runners are bare_engine.bench.throughput's. ``--baseline-rev`` also times REV's engine
(extracted as in benchmarks/overhead.py) in a subprocess on the same requests. ``--repeats R``
times the engine and transformers in turn R times (this machine drifts over minutes) and reports
each turn's ratio and their median, which is the headline ``speedup_vs_transformers``.
Results: benchmarks/results/cpu_variable_<device>.json.
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
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=1024)


def make_requests(num_requests: int, vocab_size: int, seed: int = 0):
    rng = random.Random(seed)
    return [([rng.randrange(3, vocab_size) for _ in range(rng.randint(16, 256))], rng.randint(16, 128))
            for _ in range(num_requests)]


def engine_only(model_dir: Path, num_requests: int, max_num_seqs: int) -> dict:
    from bare_engine.bench.throughput import run_engine
    from bare_engine.llm import LLM

    llm = LLM(model_dir, max_num_seqs=max_num_seqs, device="cpu")
    result = run_engine(llm, make_requests(num_requests, SHAPE["vocab_size"]))
    return {k: v for k, v in result.items() if k != "token_ids"} | {"token_ids": result["token_ids"]}


def baseline_engine(rev: str, model_dir: Path, args) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from overhead import baseline_tree

    with tempfile.TemporaryDirectory() as tmp:
        tree = baseline_tree(rev, Path(tmp))
        cmd = [sys.executable, __file__, "--engine-only", str(model_dir), "--num-requests", str(args.num_requests)]
        out = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(tree)), check=True, capture_output=True,
                             text=True, timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="transformers' static batch and the engine's max_num_seqs")
    parser.add_argument("--baseline-rev", help="git revision whose engine is also timed, in a subprocess")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="engine/transformers turns; the median ratio is reported")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--engine-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_only:
        print(json.dumps(engine_only(Path(args.engine_only), args.num_requests, args.batch)))
        return

    from bare_engine.bench.throughput import _leading_match, device_name, run_transformers
    from bare_engine.testing import make_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp) / "llama-6x384", "llama", **SHAPE)
        requests = make_requests(args.num_requests, SHAPE["vocab_size"])
        engine = engine_only(model_dir, args.num_requests, args.batch)
        row = {"engine": {k: v for k, v in engine.items() if k != "token_ids"}}
        print(json.dumps(row), flush=True)
        if args.baseline_rev:
            old = baseline_engine(args.baseline_rev, model_dir, args)
            row["baseline_engine"] = {k: v for k, v in old.items() if k != "token_ids"}
            row["speedup_vs_baseline_engine"] = engine["output_tokens_per_s"] / old["output_tokens_per_s"]
            row["baseline_engine_same_tokens"] = old["token_ids"] == engine["token_ids"]
        if not args.no_transformers:
            ratios = []
            for turn in range(args.repeats):
                if turn:
                    engine = engine_only(model_dir, args.num_requests, args.batch)
                hf = run_transformers(model_dir, requests, args.batch, torch.device("cpu"), torch.float32)
                ratios.append(engine["output_tokens_per_s"] / hf["output_tokens_per_s"])
                print(f"turn {turn + 1}: {ratios[-1]:.2f}x transformers", file=sys.stderr, flush=True)
            row["engine"] = {k: v for k, v in engine.items() if k != "token_ids"}
            row["transformers"] = {k: v for k, v in hf.items() if k != "token_ids"}
            row["speedup_vs_transformers"] = statistics.median(ratios)
            row["speedup_vs_transformers_turns"] = ratios
            agree = [_leading_match(a, b) / len(b) for a, b in zip(engine["token_ids"], hf["token_ids"])]
            row["exact_match_fraction"] = sum(a == 1.0 for a in agree) / len(agree)
    report = {
        "benchmark": "cpu_variable",
        "device": device_name(torch.device("cpu")),
        "model": {"arch": "llama", **SHAPE},
        "workload": {"num_requests": args.num_requests, "prompt": [16, 256], "output": [16, 128],
                     "batch": args.batch, "greedy": True, "repeats": args.repeats},
        "baseline_rev": args.baseline_rev,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **row,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cpu_variable_{report['device']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in row.items() if "speedup" in k or k == "exact_match_fraction"}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
