"""BARE job interleaved (a finished base candidate goes straight to refinement) vs in two phases
(all base generation, then all refinement), on the same engine.

    python benchmarks/bare_pipeline.py                       # tiny random pair, CPU
    python benchmarks/bare_pipeline.py --preset qwen3-0.6b --num 256 --max-tokens 256   # GPU
    python benchmarks/bare_pipeline.py --preset demo --num 100 --max-tokens 1000
    python benchmarks/bare_pipeline.py --base DIR --instruct DIR --seeds FILE --num 200

Each run gets a fresh engine of the same config (warmed up), so neither reuses the other's
prefix cache. The phased run refines exactly the candidates the interleaved run needed (it is told the
count in advance, which favours it). Both runs sample with the same per-candidate seeds, so
they produce the same records; the script checks that. Random models use a one-field
template whose field is the whole output, so every non-empty candidate is kept.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path

import click
import torch

from bare_engine.bench.throughput import device_name
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.records import ExistingOutput, RecordWriter
from bare_engine.pipeline.run import build_engine
from bare_engine.pipeline.runner import PipelineRunner
from bare_engine.pipeline.seeds import load_seeds
from bare_engine.pipeline.stages import StagePlanner

RESULTS = Path(__file__).parent / "results"
PRESETS = {
    "tiny": dict(arch="llama", max_position_embeddings=2048),
    "cpu-50m": dict(arch="llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048),
    "qwen3-0.6b": dict(arch="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=4096, tie_word_embeddings=True),
}
SEED_TEXTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 pens. Sara takes 5. How many are left?",
    "Mia reads 7 pages a day for 6 days. How many pages does she read?",
    "A bus has 40 seats and 23 are taken. How many are free?",
]


def make_random_pair(root: Path, preset: str) -> tuple[Path, Path, Path]:
    from bare_engine.testing import make_model_dir

    spec = dict(PRESETS[preset])
    arch = spec.pop("arch")
    base = make_model_dir(root / "base", arch, seed=1, **spec)
    instruct = make_model_dir(root / "instruct", arch, seed=2, **spec)
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(SEED_TEXTS)))
    return base, instruct, seeds


def run_interleaved(engine, planner, cfg, out: Path) -> dict:
    before = _generated(engine)
    start, cpu_start = time.perf_counter(), time.process_time()
    with RecordWriter(out) as writer:
        result = PipelineRunner(engine, planner, cfg, writer, ExistingOutput()).run()
    _sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    records = [json.loads(line) for line in out.read_text().splitlines()]
    launched = records[-1]["candidate"] + 1 if records else 0
    return {**_rates(engine, before, wall, cpu), "records": records, "candidates": launched,
            "drops": dict(result.drops)}


def run_phased(engine, planner, cfg, num_candidates: int, out: Path) -> dict:
    before = _generated(engine)
    start, cpu_start = time.perf_counter(), time.process_time()
    cands = [planner.candidate(i) for i in range(num_candidates)]
    for stage in cfg.stages:
        live = [c for c in cands if c.drop_reason is None]
        for cand in live:
            rid, prompt, params, model = planner.request(cand, stage)
            engine.add_request(rid, prompt, params, model=model)
        by_id = {f"{stage}-{c.index}": c for c in live}
        while engine.has_unfinished_requests():
            for output in engine.step():
                planner.finish(by_id[output.request_id], stage, output)
    records = [planner.record(c, n) for n, c in enumerate([c for c in cands if c.valid][: cfg.num])]
    with RecordWriter(out) as writer:  # the same durable writes as the pipeline's
        for record in records:
            writer.write(record)
    _sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {**_rates(engine, before, wall, cpu), "records": records, "candidates": num_candidates}


def _planned(overrides: dict, seeds, engine, run_seed: int, num: int):
    cfg = load_config(None, {**overrides, "num": num, "seed": run_seed})
    return cfg, StagePlanner(cfg, seeds, engine.tokenizer)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generated(engine) -> dict[str, tuple[int, int]]:
    return {name: (engine.stats[name].generated_tokens, engine.stats[name].steps) for name in engine.model_names}


def _rates(engine, before: dict, wall: float, cpu: float) -> dict:
    after = _generated(engine)
    tokens = {name: after[name][0] - before[name][0] for name in after}
    steps = {name: after[name][1] - before[name][1] for name in after}
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),  # process CPU time: steadier than wall time on a shared CPU
        "generated_tokens": tokens,
        "output_tokens_per_s": {name: round(n / wall, 2) for name, n in tokens.items()},
        "total_output_tokens_per_s": round(sum(tokens.values()) / wall, 2),
        # Timing-free view of batching: forward passes and sampled tokens per pass.
        "steps": steps,
        "tokens_per_step": {name: round(tokens[name] / max(steps[name], 1), 2) for name in tokens},
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@click.command()
@click.option("--base", type=click.Path(exists=True), help="Base model folder (default: a random pair from --preset).")
@click.option("--instruct", type=click.Path(exists=True), help="Instruct model folder.")
@click.option("--seeds", type=click.Path(exists=True), help="Seeds JSONL (with --base/--instruct).")
@click.option("--preset", type=click.Choice(sorted(PRESETS) + ["demo"]), default="tiny", show_default=True,
              help="Random model pair of this shape, or demo: the bundled demo pair, seeds and templates.")
@click.option("--num", type=int, default=16, show_default=True, help="Records to produce.")
@click.option("--max-tokens", type=int, default=24, show_default=True, help="max_tokens of both stages.")
@click.option("--max-num-seqs", type=int, default=16, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Runs of each (order alternates); the fastest of each counts.")
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch CPU threads (0: torch's default); 1 gives steadier CPU timings on a shared machine.")
@click.option("--output", type=click.Path(), default=None, help="JSON file (default: benchmarks/results/bare_pipeline_<device>.json).")
def main(base, instruct, seeds, preset, num, max_tokens, max_num_seqs, device, dtype, repeats, threads, output):
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        overrides = {"num": num, "progress": False, "engine.max_num_seqs": max_num_seqs, "engine.device": device,
                     "engine.dtype": dtype, "sampling.base.max_tokens": max_tokens,
                     "sampling.refine.max_tokens": max_tokens, "out": str(tmp / "unused.jsonl")}
        if base:
            overrides.update(base=base, instruct=instruct, seeds=seeds)
        elif preset == "demo":
            pass  # the bundled default config's models, seeds and templates
        else:
            b, i, s = make_random_pair(tmp, preset)
            overrides.update(base=str(b), instruct=str(i), seeds=str(s), fields=["text"], drop_truncated=False,
                             task="Short word problems.", **{"templates.example": "{text}",
                                                             "templates.field_markers": {"text": ""}})
        cfg = load_config(None, overrides)
        seed_examples = load_seeds(cfg.seeds, cfg.fields, cfg.id_field, cfg.k)
        runs = {"interleaved": [], "phased": []}
        num_candidates = None
        for r in range(repeats):
            order = ("interleaved", "phased") if r % 2 == 0 or num_candidates is None else ("phased", "interleaved")
            for variant in order:
                # A fresh engine per run: nothing in the prefix cache from the other variant's run.
                engine = build_engine(cfg)
                warm_cfg, warm_planner = _planned(overrides, seed_examples, engine, run_seed=999, num=2)
                run_interleaved(engine, warm_planner, warm_cfg, tmp / "warm.jsonl")
                job, planner = _planned(overrides, seed_examples, engine, run_seed=cfg.seed, num=num)
                if variant == "interleaved":
                    runs[variant].append(run_interleaved(engine, planner, job, tmp / f"run{r}.jsonl"))
                    num_candidates = runs[variant][-1]["candidates"]
                else:
                    runs[variant].append(run_phased(engine, planner, job, num_candidates, tmp / f"phased{r}.jsonl"))
                device_label = device_name(engine.device)
                del engine
                _free_memory()
        pairs = list(zip(runs["interleaved"], runs["phased"]))
        best = {name: min(rs, key=lambda x: x["wall_s"]) for name, rs in runs.items()}
        same = all(
            [r["fields"] for r in a["records"]] == [r["fields"] for r in b["records"]]
            for a, b in zip(runs["interleaved"], runs["phased"])
        )
        report = {
            "benchmark": "bare_pipeline",
            "device": device_label,
            "models": "given" if base else ("demo pair" if preset == "demo" else f"random {preset} pair"),
            "num": num, "max_tokens": max_tokens, "max_num_seqs": max_num_seqs, "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__},
            "interleaved": {k: v for k, v in best["interleaved"].items() if k != "records"},
            "phased": {k: v for k, v in best["phased"].items() if k != "records"},
            "speedup_interleaved_vs_phased": round(best["phased"]["wall_s"] / best["interleaved"]["wall_s"], 3),
            "speedup_per_repeat": [round(p["wall_s"] / i["wall_s"], 3) for i, p in pairs],
            "cpu_time_ratio_per_repeat": [round(p["cpu_s"] / i["cpu_s"], 3) for i, p in pairs],
            "same_records": same,
        }
    path = Path(output) if output else RESULTS / f"bare_pipeline_{report['device']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(json.dumps({k: report[k] for k in ("device", "speedup_interleaved_vs_phased", "same_records")}))
    for name in ("interleaved", "phased"):
        click.echo(f"{name}: {report[name]['wall_s']}s, tokens/s {report[name]['output_tokens_per_s']}")
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
