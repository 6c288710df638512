"""pytest plugin of scripts/gpu_check.py: one JSON line per finished test in $GPU_CHECK_TEST_LOG,
written as each test ends, so a test run cut off at its time limit keeps the results so far."""

import json
import os

_config = None


def pytest_configure(config):
    global _config
    _config = config


def _write(nodeid: str, outcome: str, seconds: float, longrepr) -> None:
    if hasattr(_config, "workerinput"):  # an xdist worker: the controller writes the line
        return
    line = {"test": nodeid, "outcome": outcome, "seconds": round(seconds, 2)}
    if longrepr is not None and outcome != "passed":
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)  # skips: (file, line, reason)
        line["message"] = text[-2000:]
    with open(os.environ["GPU_CHECK_TEST_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
        _write(report.nodeid, outcome, report.duration, report.longrepr)
    elif report.when == "teardown" and report.failed:
        _write(report.nodeid, "error", report.duration, report.longrepr)


def pytest_collectreport(report):
    if report.failed:
        _write(report.nodeid, "error", 0.0, report.longrepr)
