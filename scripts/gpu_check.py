"""Every CUDA test and GPU benchmark in one device call, each part under its own time limit.

    bash scripts/gpu_check.sh                # on the GPU machine: install, then parts 1-6
    bash scripts/gpu_check.sh --dry-run      # CPU, tiny shapes, small counts: the same code paths
    bash scripts/gpu_check.sh --only sampling

Parts (in order): cuda_tests, sampling, attention, nanovllm, bare_pipeline, step_overhead.
Each runs as a subprocess in its own process group, killed at its limit; one that fails or
times out is recorded in summary.json and the rest still run. The limits sum to under
TOTAL_BUDGET_S, and no part starts past it, so a device call with timeout_s <= 540 returns
with whatever parts finished. Output (at most 8 files, what a device call brings back):
<out>/summary.json, <out>/<part>_<device>.json for each part, <out>/gpu_check.log. <out> is
--out, else $OUT, else a new temp folder. On a GPU each part's JSON is also copied to
benchmarks/results/; a dry run never writes there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gpu_check_parts as parts

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TOTAL_BUDGET_S = 420  # 7 minutes: the device call (timeout_s <= 540) keeps two minutes for start-up
DRY_RUN_BUDGET_S = 170
INSTALL_LIMIT_S = 25
MIN_PART_S = 5  # a part with less time left than this is skipped, not started
LOG_TAIL_LINES = 40


class Interrupted(Exception):
    pass


@dataclass
class Context:
    dry_run: bool
    out: Path
    work: Path
    python: str
    env: dict
    device: str = "unknown"
    slug: str = "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return parts.run_worker(args.worker, Path(args.raw), args.dry_run, Path(args.work))
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    start = time.monotonic()
    budget = args.budget or (DRY_RUN_BUDGET_S if args.dry_run else TOTAL_BUDGET_S)
    out = Path(args.out or (os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_out_")))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    ctx = Context(args.dry_run, out, work, sys.executable, part_env(args.dry_run))
    log = open(out / "gpu_check.log", "a", encoding="utf-8")
    summary = {"dry_run": args.dry_run, "budget_s": budget, "out": str(out), "parts": []}
    interrupted = False
    try:
        summary["install"] = install(ctx, log, min(INSTALL_LIMIT_S, budget))
        print(f"[{time.monotonic() - start:5.0f} s] install: {summary['install']['status']} ({ctx.device})", flush=True)
        summary.update(device=ctx.device, device_slug=ctx.slug)
        for part in parts.PARTS:
            left = budget - (time.monotonic() - start)
            reason = skip_reason(part.name, args.only, interrupted, left)
            if reason:
                summary["parts"].append({"part": part.name, "status": "skipped", "reason": reason})
                continue
            try:
                limit = left if args.only else min(part.limit(args.dry_run), left)  # --only: the whole budget
                summary["parts"].append(run_part(ctx, part, limit, log))
            except Interrupted:
                interrupted = True
                summary["parts"].append({"part": part.name, "status": "interrupted"})
            print(f"[{time.monotonic() - start:5.0f} s] {part.name}: {summary['parts'][-1]['status']}", flush=True)
    except Interrupted:
        interrupted = True
    finally:
        summary["wall_s"] = round(time.monotonic() - start, 1)
        write_json(out / "summary.json", summary)
        if not args.dry_run:
            write_json(RESULTS / f"gpu_check_{ctx.slug}.json", summary)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_table(summary)
    return 130 if interrupted else 0


def skip_reason(name: str, only: str | None, interrupted: bool, seconds_left: float) -> str | None:
    if interrupted:
        return "interrupted"
    if only and name != only:
        return "--only"
    if seconds_left < MIN_PART_S:
        return "time budget spent"
    return None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes; writes nothing under benchmarks/results")
    p.add_argument("--only", choices=[part.name for part in parts.PARTS],
                   help="run this part only (after install), with the whole budget as its limit")
    p.add_argument("--out", help="output folder (default: $OUT, else a new temp folder)")
    p.add_argument("--budget", type=float, help=f"seconds for the whole run (default {TOTAL_BUDGET_S}, "
                                                 f"dry run {DRY_RUN_BUDGET_S})")
    p.add_argument("--worker", choices=parts.WORKERS, help=argparse.SUPPRESS)  # a part's body, run by the parts
    p.add_argument("--raw", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def part_env(dry_run: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_MININTERVAL="10")  # progress bars, but few lines of them in the log
    if dry_run:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
                   MKL_NUM_THREADS=env.get("MKL_NUM_THREADS", "1"))
    return env


def _interrupt(signum, frame):
    raise Interrupted(f"signal {signum}")


# ----------------------------------------------------------------------------- install


def install(ctx: Context, log, limit: float) -> dict:
    """pip install -e . (GPU machine) and a probe of the device and versions; a dry run only probes."""
    start = time.monotonic()
    record: dict = {"status": "ok"}
    if not ctx.dry_run:
        rc, _ = run_command([ctx.python, "-m", "pip", "install", "-q", "-e", ".", "--no-deps", "--no-build-isolation"],
                            limit, log, ctx.env)
        if rc != 0:  # an editable install needs PEP 660 support; a plain one into a folder does not
            site = ctx.work / "site"
            rc, _ = run_command([ctx.python, "-m", "pip", "install", "-q", ".", "--no-deps", "--no-build-isolation",
                                 "--target", str(site)], limit - (time.monotonic() - start), log, ctx.env)
            ctx.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), ctx.env.get("PYTHONPATH")]))
            record["fallback"] = "pip install --target"
        if rc != 0:
            record.update(status="failed", returncode=rc)
    else:
        record["note"] = "dry run: pip install skipped; the installed bare_engine is used"
    probe_file = ctx.work / "probe.json"
    rc, _ = run_command([ctx.python, "-c", parts.PROBE, str(probe_file)], max(limit - (time.monotonic() - start), 20),
                        log, ctx.env)
    if rc == 0:
        probe = json.loads(probe_file.read_text())
        record["probe"] = probe
        ctx.device, ctx.slug = probe["device"], device_slug(probe["device"])
        if Path(probe["bare_engine"]).resolve().parent.parent != ROOT:
            record["warning"] = f"bare_engine is imported from {probe['bare_engine']}, not from {ROOT}"
    else:
        record.update(status="failed", probe_returncode=rc)
    record["wall_s"] = round(time.monotonic() - start, 1)
    return record


def device_slug(name: str) -> str:
    """'NVIDIA-H200' -> 'h200', 'NVIDIA-H100-80GB-HBM3' -> 'h100-80gb-hbm3', 'cpu-1threads' as is."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.removeprefix("nvidia-")


# ----------------------------------------------------------------------------- one part


def run_part(ctx: Context, part, limit: float, log) -> dict:
    raw = ctx.work / f"{part.name}.raw.json"
    part_log = ctx.work / f"{part.name}.log"
    with open(part_log, "w", encoding="utf-8") as plog:
        rc, wall = run_command(part.command(ctx, raw), limit, plog, {**ctx.env, **part.extra_env(ctx, raw)})
    text = part_log.read_text(encoding="utf-8", errors="replace")
    log.write(f"\n===== part {part.name} (limit {limit:.0f} s, {wall:.1f} s, rc {rc})\n{text}")
    log.flush()
    status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
    record = {"part": part.name, "title": part.title, "status": status, "returncode": rc,
              "wall_s": round(wall, 1), "limit_s": round(limit, 1), "dry_run": ctx.dry_run, "device": ctx.device}
    try:
        result = part.collect(raw) if raw.exists() or part.collects_without_file else None
        record["result"] = result
        record["goals"] = part.goals(result, ctx.dry_run) if result is not None else []
    except Exception as exc:  # a broken report is this part's failure, not the run's
        record.update(status="failed", collect_error=f"{type(exc).__name__}: {exc}", goals=[])
    if record.get("result") is None and status == "ok":
        record.update(status="failed", collect_error="the part wrote no result")
    if record["status"] != "ok":
        record["log_tail"] = text.splitlines()[-LOG_TAIL_LINES:]
        print("\n".join(f"  | {line[-200:]}" for line in record["log_tail"][-10:]), flush=True)
    name = f"{part.name}_{ctx.slug}.json"
    write_json(ctx.out / name, record)
    if not ctx.dry_run:
        write_json(RESULTS / name, record)
    summary = {k: record[k] for k in ("part", "status", "wall_s", "limit_s", "goals") if k in record}
    return {**summary, "file": name}


def run_command(cmd: list[str], limit: float, log, env: dict) -> tuple[int | None, float]:
    """Run cmd in its own process group; kill the group at the limit. Returns (returncode or None, seconds)."""
    start = time.monotonic()
    cpu_start = _children_cpu_s()
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=os.setpgrp)
    try:
        rc = proc.wait(timeout=max(limit, 1))
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    log.write(f"[{time.monotonic() - start:.1f} s wall, {_children_cpu_s() - cpu_start:.1f} s CPU]\n")
    return rc, time.monotonic() - start


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def print_table(summary: dict) -> None:
    print(f"\ngpu_check on {summary.get('device')} ({'dry run' if summary['dry_run'] else 'full'}), "
          f"{summary['wall_s']} s of {summary['budget_s']} s; install: {summary.get('install', {}).get('status')}")
    for p in summary["parts"]:
        goals = "; ".join(f"{g['name']}: {g['value']} ({_met(g['met'])})" for g in p.get("goals", []))
        print(f"  {p['part']:<14} {p['status']:<8} {p.get('wall_s', ''):>6} s  {goals or p.get('reason', '')}")
    print(f"wrote {summary['out']}/summary.json")


def _met(met) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


if __name__ == "__main__":
    sys.exit(main())
