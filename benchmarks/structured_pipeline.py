"""The BARE pipeline on the bundled demo pair, with and without structured refine/instruct stages.

    python benchmarks/structured_pipeline.py [--num 24] [--mode bare] [--max-tokens 256]
    python benchmarks/structured_pipeline.py --mode instruct --instruct smollm2 --num 8
    python benchmarks/structured_pipeline.py --mode instruct --instruct smollm2 --preset gsm8k --num 8

Each variant is a fresh run of the default config (demo models, seeds and templates) to ``--num``
records, same run seed. Reports records/s and the drop rate (dropped candidates / candidates) with the
drop reasons. A run stops after the pipeline's own candidate budget if too many drop. Results go to
benchmarks/results/structured_pipeline_<mode>_<instruct>.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline


def one_run(tmp: Path, mode: str, num: int, max_tokens: int, structured: bool, instruct: str | None,
            preset: str | None) -> dict:
    stage = "refine" if mode == "bare" else mode
    out = tmp / f"{mode}_{structured}.jsonl"
    overrides = {"mode": mode, "num": num, "progress": False, "out": str(out), "engine.device": "cpu",
                 "sampling.base.max_tokens": max_tokens, f"sampling.{stage}.max_tokens": max_tokens,
                 f"sampling.{stage}.structured": structured}
    if instruct:
        overrides["instruct"] = instruct
    if preset:
        overrides["preset"] = preset
    cfg = load_config(None, overrides)
    result = run_pipeline(cfg, log=lambda _: None)
    candidates = max(result.candidates, 1)
    return {"records": result.written, "candidates": result.candidates, "wall_s": result.wall_s,
            "records_per_s": result.written / result.wall_s if result.wall_s else None,
            "drop_rate": sum(result.drops.values()) / candidates, "drops": dict(result.drops)}


@click.command()
@click.option("--num", default=24, show_default=True)
@click.option("--mode", type=click.Choice(["bare", "instruct"]), default="bare", show_default=True)
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--instruct", default=None, help="Instruct model folder (default: the demo's); 'smollm2' for "
              "SmolLM2-135M-Instruct (bare_engine.model.gguf_import.smollm2_dir).")
@click.option("--preset", default=None, help="A BARE paper task preset (its seeds, task and templates), e.g. gsm8k.")
def main(num: int, mode: str, max_tokens: int, instruct: str | None, preset: str | None) -> None:
    name = "demo"
    if instruct == "smollm2":
        from bare_engine.model.gguf_import import smollm2_dir

        instruct, name = str(smollm2_dir()), "smollm2"
    with tempfile.TemporaryDirectory() as tmp:
        results = {"mode": mode, "num": num, "max_tokens": max_tokens, "instruct": instruct or "demo",
                   "preset": preset,
                   "plain": one_run(Path(tmp), mode, num, max_tokens, False, instruct, preset),
                   "structured": one_run(Path(tmp), mode, num, max_tokens, True, instruct, preset)}
    suffix = f"_{preset}" if preset else ""
    out = Path(__file__).parent / "results" / f"structured_pipeline_{mode}_{name}{suffix}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
