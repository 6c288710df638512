"""Annotate mode's two label constraints side by side: the label token trie against a structured-outputs
``choice``, on the same teacher, inputs and seeds (issue 29).

    python benchmarks/annotate_constraint.py                        # the demo instruct model as teacher
    python benchmarks/annotate_constraint.py --teacher DIR --num 128

Inputs are toy-world word problems (bare_engine.demo.world) labelled "small" or "large" by their
answer. The runs alternate for ``--repeats`` rounds; the JSON holds each constraint's records/s
(median), how often the two give the same label, and each one's accuracy against the answers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bare_engine.demo import INSTRUCT_MODEL_DIR
from bare_engine.demo.world import generate_problem
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline

LABELS = ["small", "large"]


def label(problem: dict) -> str:
    return "small" if problem["final"] < 10 else "large"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(folder: Path, teacher: str, constraint: str, num: int, round_: int) -> tuple[float, dict]:
    out = folder / f"{constraint}-{round_}.jsonl"
    cfg = load_config(None, {"mode": "annotate", "teacher": teacher, "seeds": str(folder / "seeds.jsonl"),
                             "input": str(folder / "inputs.jsonl"), "labels": LABELS, "num": num,
                             "label_constraint": constraint, "out": str(out), "progress": False,
                             "engine.device": "cpu", "input_fields": ["question"]})
    start = time.perf_counter()
    result = run_pipeline(cfg, log=lambda _: None)
    seconds = time.perf_counter() - start
    assert result.complete
    records = {r["id"]: r["label"] for r in map(json.loads, out.read_text().splitlines())}
    return num / seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(INSTRUCT_MODEL_DIR))
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/annotate_constraint_cpu.json"))
    args = parser.parse_args()

    rng = random.Random(0)
    problems = [generate_problem(rng) for _ in range(args.num + 3)]
    rates: dict[str, list[float]] = {"trie": [], "choice": []}
    labels: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jsonl(folder / "seeds.jsonl", [{"question": p["question"], "label": label(p)} for p in problems[:3]])
        write_jsonl(folder / "inputs.jsonl", [{"id": i, "question": p["question"]} for i, p in enumerate(problems[3:])])
        for r in range(args.repeats):
            for constraint in (("trie", "choice") if r % 2 == 0 else ("choice", "trie")):
                rate, labels[constraint] = run(folder, args.teacher, constraint, args.num, r)
                rates[constraint].append(rate)
                print(f"round {r + 1} {constraint}: {rate:.1f} records/s", flush=True)
    truth = {i: label(p) for i, p in enumerate(problems[3:])}
    report = {
        "benchmark": "annotate_constraint", "teacher": args.teacher, "num": args.num, "labels": LABELS,
        "records_per_s": rates, "median_records_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "same_label": sum(labels["trie"][i] == labels["choice"][i] for i in truth) / len(truth),
        "accuracy": {k: sum(v[i] == truth[i] for i in truth) / len(truth) for k, v in labels.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_records_per_s", "same_label", "accuracy")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
