"""`bare-engine eval` and `bare-engine export` (registered on the main group by bare_engine.cli)."""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path

import click

from bare_engine.errors import BareEngineError, ConfigError
from bare_engine.eval.checks import load_check, run_check
from bare_engine.eval.diversity import MAX_EXACT_RECORDS
from bare_engine.eval.embed import load_embedder
from bare_engine.eval.judge import DEFAULT_K, build_trials, run_judge
from bare_engine.eval.records import fields_text
from bare_engine.eval.report import diversity_report, format_table, load_examples, plot_histograms
from bare_engine.eval.export import FORMATS, export_records


def one_line_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BareEngineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def make_judge_engine(model_dir: str, seed: int):
    """The engine that runs the judge model (a seam for tests)."""
    try:
        from bare_engine import EngineConfig, LLMEngine
    except ImportError as exc:
        raise ConfigError(f"--judge needs the bare_engine engine ({exc})") from None
    return LLMEngine(model_dir, EngineConfig(seed=seed))


@click.command("eval")
@click.argument("files", nargs=-1, required=True)
@click.option("--field", default=None,
              help="Text to evaluate: refined, base or a dotted path (default: the final example).")
@click.option("--embedder", default=None,
              help="sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2); "
                   "'hash' for a model-free smoke test.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the metrics as JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG histogram of pairwise similarities here.")
@click.option("--check", "check_spec", default=None,
              help="module:function (or file.py:function) that returns True for a valid record's fields.")
@click.option("--seed", default=0, show_default=True, help="Seed for pair sampling and judge trials.")
@click.option("--max-exact-records", default=MAX_EXACT_RECORDS, show_default=True,
              help="Above this many records, the similarity distribution comes from sampled pairs.")
@click.option("--judge", "judge_model", default=None,
              help="Model directory of an instruct judge: also report the indistinguishability rate (IR).")
@click.option("--reference", default=None, help="JSONL of real examples for the judge.")
@click.option("--reference-field", default=None, help="Field of the reference records (default: as for --field).")
@click.option("--judge-k", default=DEFAULT_K, show_default=True, help="Examples per trial (1 synthetic, k-1 real).")
@click.option("--judge-samples", default=None, type=int,
              help="Judge at most this many records per file (a fixed-seed sample).")
@click.option("--task", default="", help="Task description shown to the judge.")
@one_line_errors
def eval_command(files, field, embedder, out, plot, check_spec, seed, max_exact_records,
                 judge_model, reference, reference_field, judge_k, judge_samples, task):
    """Diversity (and optionally quality) of generated JSONL files, one table row per file."""
    loaded = [(path, *load_examples(path, field)) for path in files]
    check = load_check(check_spec) if check_spec else None
    trials = _judge_trials(loaded, judge_model, reference, reference_field, judge_k, judge_samples, seed)
    embed, embedder_name = load_embedder(embedder)
    reports = [diversity_report(path, ex, skipped, embed, max_exact_records, seed) for path, ex, skipped in loaded]
    for report, (_, examples, _) in zip(reports, loaded, strict=True):
        if check:
            report.check = run_check(check_spec, check, examples)
    if trials:
        engine = make_judge_engine(judge_model, seed)
        for report, file_trials in zip(reports, trials, strict=True):
            report.judge, _ = run_judge(engine, file_trials, task=task, seed=seed)
    click.echo(format_table(reports))
    if out:
        payload = {"embedder": embedder_name, "field": field, "seed": seed, "files": [r.to_json() for r in reports]}
        Path(out).write_text(json.dumps(payload, indent=2) + "\n")
    if plot:
        plot_histograms(reports, plot)


def _judge_trials(loaded, judge_model, reference, reference_field, k, samples, seed):
    """Judge trials per file, built (and validated) before any model loads; None without --judge."""
    if not judge_model:
        if reference:
            raise ConfigError("--reference is only used with --judge MODEL_DIR")
        return None
    if not reference:
        raise ConfigError("--judge needs --reference FILE with real examples")
    if samples is not None and samples < 1:
        raise ConfigError(f"--judge-samples must be positive, got {samples}")
    real = [fields_text(f) for f in load_examples(reference, reference_field)[0]]
    trials = []
    for _, examples, _ in loaded:
        texts = [fields_text(f) for f in examples]
        if samples is not None and samples < len(texts):
            texts = random.Random(seed).sample(texts, samples)
        trials.append(build_trials(texts, real, k, seed))
    return trials


@click.command("export")
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="sft: chat JSONL; parquet; hf: a datasets save_to_disk directory.")
@click.option("--out", required=True, help="Output file (sft, parquet) or directory (hf).")
@click.option("--field", default=None, help="Which example of each record (default: the final one).")
@click.option("--user-field", default="question", show_default=True, help="sft: field for the user turn.")
@click.option("--assistant-field", default="answer", show_default=True, help="sft: field for the assistant turn.")
@click.option("--system", default=None, help="sft: optional system message for every example.")
@one_line_errors
def export_command(file, fmt, out, field, user_field, assistant_field, system):
    """Export generated records for training a student model."""
    result = export_records(file, fmt, out, field, user_field, assistant_field, system)
    skipped = f" ({result.skipped} records skipped: missing fields)" if result.skipped else ""
    click.echo(f"wrote {result.written} examples to {result.out}{skipped}")
