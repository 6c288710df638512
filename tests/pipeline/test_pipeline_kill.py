"""kill -9 a running pipeline (a real subprocess) several times; resuming ends with the exact file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline_fake_engine import fake_factory, fake_setup, read_records

from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline

pytestmark = pytest.mark.cli

DRIVER = """
import sys
sys.path[:0] = [{here!r}, {tests!r}]
from test_pipeline_fake_engine import fake_factory
from bare_engine.pipeline.config import load_config
from bare_engine.pipeline.run import run_pipeline

cfg = load_config(sys.argv[1])
result = run_pipeline(cfg, fake_factory(step_delay=0.01, max_num_seqs=int(sys.argv[2])), log=print)
sys.exit(0 if result.complete else 1)
"""


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_and_resume_gives_exactly_n_unique_records(tmp_path):
    num = 30
    cfg = fake_setup(tmp_path, num=num)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(here=str(Path(__file__).resolve().parent), tests=str(Path(__file__).resolve().parents[1])))
    out = Path(cfg.out)

    kills = 0
    for max_num_seqs, kill_at in ((3, 4), (8, 12), (2, 20)):
        log = open(tmp_path / "driver.log", "ab")
        proc = subprocess.Popen([sys.executable, str(driver), str(config_file), str(max_num_seqs)],
                                stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while _lines(out) < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        log.close()
    assert kills >= 2, (tmp_path / "driver.log").read_text()[-3000:]
    assert 0 < _lines(out) < num

    final = subprocess.run([sys.executable, str(driver), str(config_file), "5"], capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    records = read_records(out)
    assert len(records) == num
    assert [r["id"] for r in records] == list(range(num))
    assert len({r["candidate"] for r in records}) == num

    reference = load_config(config_file, {"out": str(tmp_path / "reference.jsonl")})
    run_pipeline(reference, fake_factory(), log=lambda _: None)
    assert out.read_bytes() == Path(reference.out).read_bytes()
