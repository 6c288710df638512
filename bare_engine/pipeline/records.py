"""The output JSONL: whole-line appends made durable one by one, and reading it back on resume."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bare_engine.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None


@dataclass
class ExistingOutput:
    count: int = 0  # records already in the file
    last_candidate: int = -1  # candidate index of the last record
    torn_bytes: int = 0  # bytes of a torn last line that were cut off


def read_output(path: str | Path) -> ExistingOutput:
    """Read what an earlier run wrote; a torn last line (no newline: the run died mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return ExistingOutput()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    state = ExistingOutput(torn_bytes=len(data) - keep)
    for line_no, line in enumerate(data[:keep].splitlines(), start=1):
        candidate = _candidate_index(line)
        if candidate is None or candidate <= state.last_candidate:
            raise ConfigError(f"output file {path} line {line_no} is not a record of this pipeline; use another --out")
        state.count += 1
        state.last_candidate = candidate
    return state


def _candidate_index(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    candidate = record.get("candidate") if isinstance(record, dict) else None
    return candidate if isinstance(candidate, int) else None


class RecordWriter:
    """Appends one JSON record per line; each line is flushed and fsynced before write() returns.

    Holds an exclusive lock on the file while open, so two runs never write one output
    (the OS drops the lock when a process dies, even by kill -9).
    """

    def __init__(self, path: str | Path):
        self._file = open(path, "ab")
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise ConfigError(f"another run is writing {path}") from None

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_writable(path: str | Path) -> None:
    """ConfigError unless `path` can be appended to and its folder takes new files (the manifest)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output path {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists():
            with open(path, "ab"):
                pass
    except OSError as e:
        raise ConfigError(f"cannot write output file {path}: {e.strerror or e}") from None


def manifest_path(out: str | Path) -> Path:
    return Path(str(out) + ".manifest.json")
