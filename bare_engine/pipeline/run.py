"""One pipeline run: check every input, set up or resume the output, load models, drive the runner."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bare_engine.errors import ConfigError
from bare_engine.pipeline.annotate import prepare_annotate, teacher_spec
from bare_engine.pipeline.config import PipelineConfig, engine_config
from bare_engine.pipeline.manifest import build_manifest, check_resume, read_manifest, write_manifest
from bare_engine.pipeline.progress import Progress
from bare_engine.pipeline.records import (ExistingOutput, RecordCheck, RecordWriter, check_writable, manifest_path,
                                          read_output)
from bare_engine.pipeline.runner import PipelineRunner, RunResult
from bare_engine.pipeline.seeds import load_candidates, load_seeds
from bare_engine.pipeline.stages import StagePlanner, derive_seed
from bare_engine.model.tokenizer import load_tokenizer

CHAT_STAGES = ("refine", "instruct")


def build_engine(cfg: PipelineConfig):
    from bare_engine import LLMEngine

    engine_cfg = engine_config(cfg)
    models = {name: cfg.model_path(name) for name in cfg.model_names}
    if cfg.mode == "annotate":
        models["teacher"] = teacher_spec(cfg)  # a LoRA adapter teacher is merged into its base
    return LLMEngine(models, engine_cfg)


def check_models(cfg: PipelineConfig) -> None:
    """Model folders exist; the instruct model has a chat template when a chat stage uses it."""
    for name in cfg.model_names:
        path = Path(cfg.model_path(name))
        if not (path / "config.json").is_file():
            raise ConfigError(f"{name} model not found: {path} has no config.json")
    if any(stage in CHAT_STAGES for stage in cfg.stages):
        tok = load_tokenizer(Path(cfg.instruct))
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"instruct model {cfg.instruct} has no chat template (needed to prompt it)")


def prepare_output(cfg: PipelineConfig, manifest: dict) -> ExistingOutput:
    """Refuse to mix runs, cut a torn last line, and (re)write the manifest before any record."""
    out = Path(cfg.out)
    old = read_manifest(out)
    if out.exists() and out.stat().st_size > 0:
        check_resume(out, old, manifest)
        manifest["runs"] = old.get("runs", [])
        existing = read_output(out, record_check(cfg))
    else:
        existing = ExistingOutput()
    write_manifest(out, manifest)
    return existing


def record_check(cfg: PipelineConfig) -> RecordCheck:
    """Whether a line on resume is a record this run could have written: its keys and types, the mode,
    its ordinal (generate modes), and each stage's seed, derived from the run seed and the candidate."""
    keys = {"id", "candidate", "mode", "fields", "seed_ids", *cfg.stages}
    keys |= {"label", "label_prob"} if cfg.mode == "annotate" else set()

    def check(record: dict, ordinal: int) -> str | None:
        missing = sorted(keys - set(record))
        if missing:
            return f"missing {', '.join(missing)}"
        if record["mode"] != cfg.mode:
            return f"mode {record['mode']!r}, not {cfg.mode!r}"
        if cfg.mode != "annotate" and record["id"] != ordinal:
            return f"id {record['id']!r} at position {ordinal}"
        if not isinstance(record["seed_ids"], list) or not (record["fields"] is None or isinstance(record["fields"], dict)):
            return "fields or seed_ids of the wrong type"
        for stage in cfg.stages:
            entry = record[stage]
            if not isinstance(entry, dict) or entry.get("seed") != derive_seed(cfg.seed, record["candidate"], stage):
                return f"its {stage} stage was not run with this config's seed for candidate {record['candidate']}"
        return None

    return check


@dataclass
class Job:
    """What a run needs besides its engine: the checked config and how to plan its candidates."""

    cfg: PipelineConfig  # annotate mode: num capped at the number of input lines
    extra_models: dict[str, Path]  # more model folders the run depends on (a LoRA teacher's base)
    make_planner: Callable[[object], StagePlanner]  # engine (anything with .tokenizer) -> planner


def prepare_job(cfg: PipelineConfig, log: Callable[[str], None] = print) -> Job:
    """Read and check every input file and model folder; loads no model."""
    if cfg.mode == "annotate":
        job = prepare_annotate(cfg, log)
        return Job(job.cfg, job.extra_models, job.planner)
    seeds = load_seeds(cfg.seeds, cfg.fields, cfg.id_field, cfg.k)
    inputs = load_candidates(cfg.candidates, cfg.fields) if cfg.mode == "refine" else None
    check_models(cfg)
    return Job(cfg, {}, lambda engine: StagePlanner(cfg, seeds, engine.tokenizer, inputs))


def uses_ray(cfg: PipelineConfig) -> bool:
    return cfg.data_parallel > 1 or bool(cfg.ray_address)


def run_pipeline(
    cfg: PipelineConfig,
    engine_factory: Callable[[PipelineConfig], object] = build_engine,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run (or resume) the configured job until `cfg.num` records exist; returns the summary."""
    job = prepare_job(cfg, log)
    cfg = job.cfg
    check_writable(cfg.out)
    manifest = build_manifest(cfg, job.extra_models)
    new_output = not Path(cfg.out).exists()
    with RecordWriter(cfg.out) as writer:  # locks the output before reading or cutting it
        try:
            return _run_locked(cfg, job, manifest, writer, engine_factory, log)
        except BaseException:
            if new_output and Path(cfg.out).stat().st_size == 0:
                Path(cfg.out).unlink()  # a run that failed before its first record leaves nothing behind
                manifest_path(cfg.out).unlink(missing_ok=True)
            raise


def _run_locked(cfg: PipelineConfig, job: Job, manifest: dict, writer: RecordWriter, engine_factory,
                log) -> RunResult:
    existing = prepare_output(cfg, manifest)
    if existing.torn_bytes:
        log(f"resume: dropped a torn last line ({existing.torn_bytes} bytes) from {cfg.out}")
    if existing.count >= cfg.num:
        log(f"{cfg.out} already has {existing.count} records (target {cfg.num}); nothing to do")
        return RunResult(records=existing.count, target=cfg.num)
    if existing.count:
        log(f"resuming {cfg.out}: {existing.count}/{cfg.num} records present")
    started = _now()
    if uses_ray(cfg):
        from bare_engine.ray.driver import run_data_parallel  # Ray is an extra: imported only here

        result = run_data_parallel(job, writer, existing, log)
    else:
        result = _run_one_engine(job, engine_factory(cfg), writer, existing)
    manifest["runs"].append(_run_entry(result, existing, started))
    write_manifest(cfg.out, manifest)
    return result


def _run_one_engine(job: Job, engine, writer: RecordWriter, existing: ExistingOutput) -> RunResult:
    progress = Progress(engine, job.cfg.num, existing.count, enabled=job.cfg.progress)
    try:
        return PipelineRunner(engine, job.make_planner(engine), job.cfg, writer, existing, progress).run()
    finally:
        progress.close()
        if hasattr(engine, "shutdown"):  # stops tensor-parallel workers; test engines may lack it
            engine.shutdown()


def _run_entry(result: RunResult, existing: ExistingOutput, started: str) -> dict:
    return {
        "started": started,
        "finished": _now(),
        "records_before": existing.count,
        "records_after": result.records,
        "candidates": result.candidates,
        "drops": dict(sorted(result.drops.items())),
        "models": result.models,
        "wall_s": round(result.wall_s, 3),
        "interrupted": result.interrupted,
        "stop_reason": result.stop_reason,
        **({"data_parallel": result.data_parallel} if result.data_parallel else {}),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
