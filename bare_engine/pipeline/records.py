"""The output JSONL: whole-line appends made durable one by one, and reading it back on resume.

Resume verifies every complete line (``RecordCheck``: the structure this run writes, candidate
indices rising, each stage's seed derived from the run seed and the candidate) before it touches
the file; only then is a torn last line cut off. A write that fails (full disk, file size limit,
permissions) is a ConfigError, with the file cut back to its last whole line.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# (record, its 0-based line) -> why it is not a record this run could have written, or None.
RecordCheck = Callable[[dict, int], "str | None"]


def read_output(path: str | Path, check: RecordCheck | None = None) -> ExistingOutput:
    """Read what an earlier run wrote. Every complete line must be a JSON record with a candidate index
    above the previous line's (and pass ``check``), else ConfigError and the file is left as it was;
    after that, a torn last line (no newline: the run died mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return ExistingOutput()
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    state = ExistingOutput(torn_bytes=len(data) - keep)
    for line_no, line in enumerate(data[:keep].split(b"\n")[:-1], start=1):
        why = _refusal(line, state.last_candidate, line_no - 1, check)
        if why is not None:
            raise ConfigError(f"output file {path} line {line_no} is not a record of this pipeline ({why}); "
                              "the file is unchanged; use another --out")
        state.count += 1
        state.last_candidate = json.loads(line)["candidate"]
    if keep < len(data):
        try:
            with open(path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise ConfigError(f"cannot cut the torn last line of {path}: {e.strerror or e}") from None
    return state


def _refusal(line: bytes, last_candidate: int, ordinal: int, check: RecordCheck | None) -> str | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(record, dict):
        return "not a JSON object"
    candidate = record.get("candidate")
    if not isinstance(candidate, int) or isinstance(candidate, bool) or candidate < 0:
        return "no candidate index"
    if candidate <= last_candidate:
        return f"candidate {candidate} does not follow candidate {last_candidate}"
    return check(record, ordinal) if check is not None else None


class RecordWriter:
    """Appends one JSON record per line; each line is flushed and fsynced before write() returns.

    Holds an exclusive lock on the file while open, so two runs never write one output
    (the OS drops the lock when a process dies, even by kill -9).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing queued
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise ConfigError(f"another run is writing {path}") from None

    def write(self, record: dict) -> None:
        """Append one line; ConfigError when it cannot be written (the file keeps its whole lines)."""
        line = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        fd = self._file.fileno()
        end = os.fstat(fd).st_size
        try:
            while line:
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError as e:
            try:  # drop the partial line (resume would cut it anyway)
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise ConfigError(f"cannot write output file {self.path}: {e.strerror or e}") from None

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
