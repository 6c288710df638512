"""`bare-engine bench`: the engine against transformers generate() on the same model and requests."""

from __future__ import annotations

import click

from bare_engine.cli import engine_config_from, engine_options


@click.command()
@click.option("--workload", type=click.Choice(["fixed", "variable", "both", "nanovllm"]), default="both",
              show_default=True, help="nanovllm: 256 requests, prompt and output lengths uniform in 100-1024.")
@click.option("--num-requests", type=int, default=64, show_default=True)
@click.option("--preset", type=click.Choice(["cpu-50m", "tiny", "qwen3-0.6b"]), default="cpu-50m", show_default=True,
              help="Random-weight model shape to benchmark.")
@click.option("--no-baseline", is_flag=True, help="Skip the transformers generate() baseline.")
@click.option("--out", "out_dir", type=click.Path(), default="benchmarks/results", show_default=True)
@engine_options
def bench(workload, num_requests, preset, no_baseline, out_dir, **kwargs):
    """Throughput of the engine vs transformers generate() on the same model and requests (writes JSON)."""
    from bare_engine.bench.throughput import run_throughput_benchmark

    config = engine_config_from(kwargs)
    workloads = ["fixed", "variable"] if workload == "both" else [workload]
    path = run_throughput_benchmark(preset, workloads, num_requests, config, not no_baseline, out_dir)
    click.echo(f"wrote {path}")
