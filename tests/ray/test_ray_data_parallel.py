"""Data parallelism on Ray (bare_engine/ray), on CPU: 2 replicas of the demo pair, one thread each.

One local Ray instance (2 CPUs) is shared by the module; the CLI test starts and stops its own.
Every run must write the file a single process writes, byte for byte, and leave no Ray process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from bare_engine.errors import ConfigError  # noqa: E402
from bare_engine.pipeline.cli import run_command  # noqa: E402
from bare_engine.pipeline.config import load_config  # noqa: E402
from bare_engine.pipeline.run import run_pipeline  # noqa: E402
from bare_engine.ray.cluster import check_reachable  # noqa: E402

pytestmark = pytest.mark.ray

NUM = 6
# max_num_seqs 2: chunks of one candidate, so records arrive one by one and a kill lands mid-run.
COMMON = {"num": NUM, "seed": 5, "progress": False, "engine.device": "cpu", "engine.max_num_seqs": 2}
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py", "dashboard",
                       "runtime_env", "autoscaler/_private/monitor.py")
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ray_processes() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmdline for marker in RAY_PROCESS_MARKERS):
            pids.add(int(entry.name))
    return pids


def wait_gone(before: set[int], timeout_s: float = 30.0) -> set[int]:
    """Ray processes that are new since `before` and still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = ray_processes() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster():
    """The shared instance; without token authentication, so that CLI subprocesses can join it."""
    before = ray_processes()
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = ENV["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config={"worker_niceness": 0})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            del os.environ["RAY_AUTH_MODE"]
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        del ENV["RAY_AUTH_MODE"]
        left = wait_gone(before)
        assert not left, f"Ray processes left after shutdown: {sorted(left)}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process file (no Ray)."""
    out = tmp_path_factory.mktemp("ref") / "one.jsonl"
    result = run_pipeline(load_config(None, {**COMMON, "out": str(out)}), log=lambda _: None)
    assert result.complete
    return out.read_bytes()


def cli_args(out: Path, *extra: str) -> list[str]:
    return ["--num", str(NUM), "--seed", "5", "--no-progress", "--device", "cpu", "--max-num-seqs", "2",
            "--out", str(out), *extra]


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def last_run(out: Path) -> dict:
    return json.loads(Path(str(out) + ".manifest.json").read_text())["runs"][-1]


def test_two_replicas_write_the_single_process_file(reference, tmp_path):
    """`bare-engine run --data-parallel 2`, typed in the repository's root (Ray puts the driver's working
    directory on the workers' path): it starts its own local Ray, stops it at the end, and leaves no Ray process."""
    before = ray_processes()
    out = tmp_path / "two.jsonl"
    command = [str(Path(sys.executable).with_name("bare-engine")), "run", *cli_args(out, "--data-parallel", "2")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == reference
    dp = last_run(out)["data_parallel"]
    assert dp["replicas"] == 2 and dp["cluster"]["started_here"] and dp["gpus_per_replica"] == 0
    assert sum(r["candidates"] for r in dp["per_replica"]) >= NUM
    assert all(r["candidates"] > 0 for r in dp["per_replica"]), dp  # both replicas took chunks
    assert "replica 0 (" in proc.stderr and "replica 1 (" in proc.stderr  # per-replica throughput
    left = wait_gone(before)
    assert not left, f"Ray processes left after the command: {sorted(left)}"


def test_kill_9_of_the_driver_then_resume(cluster, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "bare_engine.pipeline.cli", *cli_args(out, "--data-parallel", "2",
                                                                       "--ray-address", cluster)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 300
    while lines(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed, proc.stderr.read().decode()[-3000:]
    assert 0 < lines(out) < NUM or out.read_bytes() == reference
    again = subprocess.run(args, capture_output=True, text=True, timeout=400, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == reference


def test_a_replica_killed_mid_run_is_replaced(cluster, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    cfg = load_config(None, {**COMMON, "out": str(out), "data_parallel": 2})
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_pipeline(cfg, log=lambda _: None)))
    thread.start()
    try:
        deadline = time.monotonic() + 300
        handles = []  # looked up before records arrive: listing actors is slow, a fast run ends meanwhile
        while len(handles) < 2 and thread.is_alive() and time.monotonic() < deadline:
            replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("replica-")]
            if len(replicas) == 2:
                handles = [ray.get_actor(a["name"], namespace=a["namespace"]) for a in replicas]
            else:
                time.sleep(0.01)
        while lines(out) < 2 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.is_alive() and len(handles) == 2, "the run ended before a replica could be killed"
        for handle in handles:  # both: at least one holds chunks now
            ray.kill(handle)
    finally:
        thread.join(timeout=400)
    assert outcome["result"].complete
    assert out.read_bytes() == reference
    dp = last_run(out)["data_parallel"]
    assert dp["chunks_reassigned"] >= 1 and sum(r["restarts"] for r in dp["per_replica"]) >= 1, dp


def invoke(*args: str):
    result = CliRunner().invoke(run_command, list(args))
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("n", ["0", "-2"])
def test_data_parallel_must_be_positive(tmp_path, n):
    code, output = invoke(*cli_args(tmp_path / "o.jsonl", "--data-parallel", n))
    assert code == 1 and error_lines(output) == [f"error: data_parallel must be >= 1, got {n}"]


def test_more_replicas_than_the_cluster_holds(cluster, tmp_path):
    code, output = invoke(*cli_args(tmp_path / "a.jsonl", "--data-parallel", "2", "--device", "cuda"))
    assert code == 1 and error_lines(output) == [
        "error: data_parallel 2 x tensor_parallel_size 1 needs 2 GPUs, but the Ray cluster has 0"]
    code, output = invoke(*cli_args(tmp_path / "b.jsonl", "--data-parallel", "3"))
    assert code == 1 and error_lines(output) == [
        "error: data_parallel 3 needs 3 CPUs (one per replica), but the Ray cluster has 2"]


def test_a_replica_that_cannot_start_is_one_error(cluster, tmp_path):
    start = time.monotonic()
    code, output = invoke(*cli_args(tmp_path / "o.jsonl", "--data-parallel", "2", "--num-kv-blocks", "2"))
    assert code == 1 and len(error_lines(output)) == 1 and "KV" in error_lines(output)[0], output
    assert time.monotonic() - start < 120
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("replica-")]


def run_cli_without_ray_in_process(tmp_path, *extra: str, hide_ray: bool = False) -> subprocess.CompletedProcess:
    code = ("import sys\n" + ("sys.modules['ray'] = None\n" if hide_ray else "") +
            "from bare_engine.pipeline.cli import run_command\nrun_command()\n")
    return subprocess.run([sys.executable, "-c", code, *cli_args(tmp_path / "o.jsonl", *extra)],
                          capture_output=True, text=True, timeout=120, env=ENV)


def test_unreachable_ray_address(tmp_path):
    start = time.monotonic()
    proc = run_cli_without_ray_in_process(tmp_path, "--data-parallel", "2", "--ray-address", "127.0.0.1:1")
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "error: cannot reach the Ray cluster at 127.0.0.1:1 within 10s: Connection refused"], proc.stderr[-2000:]
    assert time.monotonic() - start < 60
    with pytest.raises(ConfigError, match="--ray-address must be host:port or auto, got 'nowhere'"):
        check_reachable("nowhere")


def test_ray_not_installed_names_the_extra(tmp_path):
    proc = run_cli_without_ray_in_process(tmp_path, "--data-parallel", "2", hide_ray=True)
    assert proc.returncode == 1
    assert len(error_lines(proc.stderr)) == 1 and 'pip install -e ".[ray]"' in proc.stderr, proc.stderr[-2000:]


def test_ray_data_stage_equals_the_offline_pipeline(cluster, tmp_path):
    """Kaddour & Liu's annotate recipe as a Ray Data stage: 50 unlabeled rows, 2 actors."""
    from bare_engine.demo import BASE_MODEL_DIR
    from bare_engine.ray import PipelineStage

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [
        ("Tom has 3 apples and buys 4 more. How many apples does he have?", "yes"),
        ("the cat sleeps on the warm mat", "no"),
        ("A box holds 12 pens. Sara takes 5. How many are left?", "yes")]))
    rows = [{"text": f"Sara has {i} pens and gives {i % 4} away." if i % 3 else f"a quiet day number {i}"}
            for i in range(50)]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {"mode": "annotate", "teacher": str(BASE_MODEL_DIR), "seeds": str(seeds),
                 "labels": ["yes", "no"], "task": "Is this a math word problem?", "num": 50,
                 "progress": False, "engine.device": "cpu", "engine.max_num_seqs": 16}
    offline = tmp_path / "offline.jsonl"
    run_pipeline(load_config(None, {**overrides, "input": str(inputs), "out": str(offline)}), log=lambda _: None)
    want = [json.loads(line) for line in offline.read_text().splitlines()]

    ds = ray.data.from_items([{"index": i, **r} for i, r in enumerate(rows)])
    got = ds.map_batches(PipelineStage, fn_constructor_kwargs={"overrides": overrides}, concurrency=2, num_cpus=1,
                         batch_size=16).take_all()
    got.sort(key=lambda row: row["index"])
    assert len(got) == len(want) == 50
    assert [json.loads(row["record"]) for row in got] == want
    assert [row["label"] for row in got] == [r["label"] for r in want]
    assert {r["label"] for r in want} <= {"yes", "no"} and all(row["drop_reason"] is None for row in got)
