"""Tokens/s of constrained (JSON schema) vs unconstrained generation at batch 1, 16 and 64, one run.

    python benchmarks/structured_throughput.py [--model DIR] [--tokens 64]

Every arm decodes --tokens tokens per row at temperature 1.0 on the same engine (ignore_eos). The
constrained arms pay the batched bitmask fill, its unpacking to the sampler's mask,
the full sampler instead of argmax-free paths, and synchronous steps (needs_host_history). Default model:
the bundled demo instruct model (vocab 49k is SmolLM2's: pass --model with bare_engine.model.gguf_import.smollm2_dir()).
Results go to benchmarks/results/structured_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bare_engine import LLM, SamplingParams, StructuredOutputsParams

# Two constrained arms: digits (few tokens allowed per step: the sampler draws noise only for allowed
# tokens, so on the CPU this arm samples faster than the unconstrained one) and strings (most of the
# vocabulary allowed inside a string: sampling costs what it costs unconstrained, so the ratio shows
# the grammar's own overhead: bitmask fill, unpack, mask).
# minItems 256: no row can close its array (and end) within --tokens <= 256, so every arm decodes
# full batches for the same number of steps.
SCHEMAS = {
    "digits": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 256},
    "strings": {"type": "array", "items": {"type": "string"}, "minItems": 256},
}


def run(llm: LLM, batch: int, tokens: int, arm: str) -> float:
    spec = StructuredOutputsParams(json=SCHEMAS[arm]) if arm in SCHEMAS else None
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=tokens, ignore_eos=True, structured_outputs=spec)
              for i in range(batch)]
    prompts = [f"Numbers {i}:" for i in range(batch)]
    llm.generate(prompts[:1], params[:1], use_tqdm=False)  # warm-up (and the grammar compile)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per arm; the median is kept")
    args = parser.parse_args()
    from bare_engine.demo import INSTRUCT_MODEL_DIR

    model = args.model or str(INSTRUCT_MODEL_DIR)
    llm = LLM(model, max_num_seqs=64, max_model_len=args.tokens + 32)
    results = {"model": model, "tokens_per_row": args.tokens, "repeats": args.repeats, "batches": {}}
    for batch in map(int, args.batches.split(",")):
        runs = {"unconstrained": [], **{arm: [] for arm in SCHEMAS}}
        for _ in range(args.repeats):  # alternate the arms so that a noisy neighbour hits all
            for arm in runs:
                runs[arm].append(run(llm, batch, args.tokens, arm))
        tok_s = {arm: statistics.median(r) for arm, r in runs.items()}
        results["batches"][batch] = {f"{arm}_tok_s": v for arm, v in tok_s.items()} | {
            f"{arm}_over_unconstrained": tok_s[arm] / tok_s["unconstrained"] for arm in SCHEMAS}
        print(batch, results["batches"][batch], flush=True)
    name = "structured_throughput" + ("" if args.model is None else "_" + Path(model).name)
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
