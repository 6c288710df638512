"""scripts/gpu_check.sh: the dry run end to end (what CI can check before any GPU is lent),
and the runner's bookkeeping: time limits, failures that do not stop the rest, --only."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
gpu_check = importlib.import_module("gpu_check")
parts = importlib.import_module("gpu_check_parts")

PART_NAMES = ["cuda_tests", "sampling", "attention", "nanovllm", "bare_pipeline", "step_overhead"]
DEVICE_CALL_TIMEOUT_S = 540


def results_snapshot() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (ROOT / "benchmarks" / "results").iterdir()}


def test_dry_run_runs_every_part_and_leaves_benchmark_results_alone(tmp_path):
    out = tmp_path / "out"
    before = results_snapshot()
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("OUT", None)
    # A generous budget: a loaded CI machine must not turn slowness into skipped parts.
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                             "--budget", "400"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=480)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # gpu_check kills its running part's group on SIGTERM
            proc.wait(timeout=30)
    assert proc.returncode == 0, stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["install"]["status"] == "ok"
    assert [p["part"] for p in summary["parts"]] == PART_NAMES
    for entry in summary["parts"]:
        assert entry["status"] == "ok", (entry, (out / "gpu_check.log").read_text()[-3000:])
        record = json.loads((out / entry["file"]).read_text())
        assert record["part"] == entry["part"] and record["result"] and record["goals"]
        assert all(set(g) == {"name", "value", "target", "met"} for g in record["goals"])
    tests = json.loads((out / summary["parts"][0]["file"]).read_text())["result"]
    assert tests["tests"] >= 20 and tests["error"] == 0
    if not summary["install"]["probe"]["cuda"]:
        assert tests["skipped"] == tests["tests"]  # every CUDA test skips cleanly on a CPU
    assert len(list(out.iterdir())) <= 8  # what a device call brings back
    # Other benchmarks may write there meanwhile: check the files a non-dry run would write.
    after = results_snapshot()
    for name in [p["file"] for p in summary["parts"]] + [f"gpu_check_{summary['device_slug']}.json"]:
        assert after.get(name) == before.get(name), f"a dry run wrote benchmarks/results/{name}"


def test_time_limits_fit_one_device_call():
    total = gpu_check.INSTALL_LIMIT_S + sum(p.limit_s for p in parts.PARTS)
    assert total <= gpu_check.TOTAL_BUDGET_S <= 7 * 60 and total < 7 * 60
    assert gpu_check.TOTAL_BUDGET_S + 60 <= DEVICE_CALL_TIMEOUT_S  # room for start-up and the copy back
    assert [p.name for p in parts.PARTS] == PART_NAMES


def test_unknown_part_is_rejected():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--only", "bogus"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr


@pytest.mark.parametrize("name, expected", [("NVIDIA-H200", "h200"), ("NVIDIA-H100-80GB-HBM3", "h100-80gb-hbm3"),
                                            ("cpu-1threads", "cpu-1threads")])
def test_device_slug(name, expected):
    assert gpu_check.device_slug(name) == expected


WRITE_RESULT = "import json, sys; json.dump({'x': 1}, open(sys.argv[1], 'w'))"
# Leaves a grandchild behind and hangs: the time limit must end both.
HANG = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); open(sys.argv[1] + '.pid', 'w').write(str(p.pid)); time.sleep(300)"


def fake_part(name, code, limit=20):
    return parts.Part(name, name, limit, limit, [], [], ["{python}", "-c", code], parts.read_json,
                      lambda r, dry: [parts.goal("x", r["x"], "1", r["x"] == 1, dry, speed=False)], raw_flag=[])


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """gpu_check.main over fake parts, with the install step stubbed out."""
    def stub_install(ctx, log, limit):
        ctx.device, ctx.slug = "fake-device", "fake"
        return {"status": "ok"}

    monkeypatch.setattr(gpu_check, "install", stub_install)
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path / "results")

    def run(fake_parts, *args, dry_run=True):
        monkeypatch.setattr(parts, "PARTS", fake_parts)
        out = tmp_path / "out"
        assert gpu_check.main(["--dry-run"] * dry_run + ["--out", str(out), *args]) == 0
        return out, json.loads((out / "summary.json").read_text())

    return run


def test_a_failing_or_hanging_part_is_recorded_and_the_rest_still_run(fake_run):
    start = time.monotonic()
    out, summary = fake_run([fake_part("fails", "import sys; sys.exit(3)"), fake_part("hangs", HANG, limit=2),
                             fake_part("works", WRITE_RESULT)])
    assert time.monotonic() - start < 30
    status = {p["part"]: p["status"] for p in summary["parts"]}
    assert status == {"fails": "failed", "hangs": "timeout", "works": "ok"}
    failed = json.loads((out / "fails_fake.json").read_text())
    assert failed["returncode"] == 3 and failed["log_tail"]
    assert json.loads((out / "works_fake.json").read_text())["goals"][0]["met"] is True
    assert not (out.parent / "results").exists()  # a dry run writes no benchmark results


def test_hanging_part_leaves_no_process_behind(tmp_path):
    ctx = gpu_check.Context(True, tmp_path, tmp_path, sys.executable, dict(os.environ))
    raw = tmp_path / "hangs.raw.json"
    with open(tmp_path / "log", "w") as log:
        rc, wall = gpu_check.run_command(fake_part("hangs", HANG).command(ctx, raw), 3, log, ctx.env)
    assert rc is None and wall < 15
    grandchild = int(Path(str(raw) + ".pid").read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_only_runs_one_part_and_a_spent_budget_skips_the_rest(fake_run):
    _, summary = fake_run([fake_part("a", WRITE_RESULT), fake_part("b", WRITE_RESULT)], "--only", "b")
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("a", "skipped"), ("b", "ok")]
    assert summary["parts"][1]["limit_s"] > 100  # the whole budget, not the part's own 20 s
    _, summary = fake_run([fake_part("slow", HANG, limit=3), fake_part("late", WRITE_RESULT)], "--budget", "6")
    assert [p["status"] for p in summary["parts"]] == ["timeout", "skipped"]
    assert summary["parts"][1]["reason"] == "time budget spent"


def test_a_gpu_run_copies_each_part_and_the_summary_to_benchmark_results(fake_run, tmp_path):
    out, summary = fake_run([fake_part("works", WRITE_RESULT)], dry_run=False)
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == ["gpu_check_fake.json", "works_fake.json"]
    assert json.loads((results / "works_fake.json").read_text()) == json.loads((out / "works_fake.json").read_text())
    assert json.loads((results / "gpu_check_fake.json").read_text())["parts"] == summary["parts"]
