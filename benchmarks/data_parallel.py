"""Records/s of `bare-engine run` with 1 and 2 data-parallel replicas on Ray (CPU, one thread each).

Same run, same job (the bundled demo, BARE mode): a single process without Ray (the baseline),
then 1 and 2 Ray replicas on one local Ray instance, alternating for --repeats rounds; medians.
records/s counts generation only (after the models loaded); `total_s` includes start-up.
Every file must equal the single-process one byte for byte.

    OMP_NUM_THREADS=1 python benchmarks/data_parallel.py --num 24 --repeats 1 --max-num-seqs 4

A replica's throughput grows with its batch until the batch is full; the benchmark keeps each
replica's batch small and full (--max-num-seqs) so that the ratio shows what a second replica
adds when the first is saturated. With a big batch on a tiny model one CPU replica already
steps all candidates at once and a second one adds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline


def one_run(out: Path, num: int, max_num_seqs: int, replicas: int | None) -> dict:
    overrides = {"num": num, "out": str(out), "progress": False, "engine.device": "cpu",
                 "engine.max_num_seqs": max_num_seqs}
    if replicas is not None:
        overrides["data_parallel"] = replicas
    start = time.perf_counter()
    result = run_pipeline(load_config(None, overrides), log=lambda _: None)
    total = time.perf_counter() - start
    assert result.complete
    run = {"records_per_s": result.records / result.wall_s, "wall_s": result.wall_s, "total_s": total,
           "generated_tokens": sum(m["generated_tokens"] for m in result.models.values())}
    if result.data_parallel:
        run["candidates_per_replica"] = [r["candidates"] for r in result.data_parallel["per_replica"]]
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-num-seqs", type=int, default=4,
                        help="per replica; small, so that one replica is saturated (a full batch, as on a busy GPU)")
    parser.add_argument("--out", default="benchmarks/results/data_parallel_cpu-1thread.json")
    args = parser.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config={"worker_niceness": 0})
    runs: dict[str, list[dict]] = {"single_process": [], "ray_1_replica": [], "ray_2_replicas": []}
    files = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for name, replicas in (("single_process", None), ("ray_1_replica", 1), ("ray_2_replicas", 2)):
                    out = Path(tmp) / f"{name}-{r}.jsonl"
                    runs[name].append(one_run(out, args.num, args.max_num_seqs, replicas))
                    files[name, r] = out.read_bytes()
                    print(name, r, json.dumps(runs[name][-1]), flush=True)
    finally:
        ray.shutdown()
    identical = len(set(files.values())) == 1
    keys = ("records_per_s", "wall_s", "total_s")
    medians = {name: {key: round(statistics.median(run[key] for run in rs), 3) for key in keys}
               for name, rs in runs.items()}
    base = medians["ray_1_replica"]["records_per_s"]
    report = {
        "benchmark": "data_parallel", "job": "bundled demo, mode bare", "num": args.num, "repeats": args.repeats,
        "max_num_seqs_per_replica": args.max_num_seqs,
        "device": "cpu", "threads_per_replica": 1, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "medians": medians, "runs": runs, "files_identical": identical,
        "speedup_2_vs_1_replica": round(medians["ray_2_replicas"]["records_per_s"] / base, 3),
        "note": "2 replicas need 2 free cores; other jobs shared this machine's 2 cores during the run "
                "(see load_average_at_end), so the ratio is a lower bound of what 2 idle cores give",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(medians, indent=2), "\nspeedup", report["speedup_2_vs_1_replica"], "identical", identical)


if __name__ == "__main__":
    main()
