"""Run a server for a while and always stop it: in a thread of this process (tests) or as a
`bare-engine serve` child process (tests, benchmarks). Every wait is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

URL_LINE = re.compile(r"^serving .* on (http://\S+)$")
CLI = "import sys; from bare_engine.cli import main; sys.argv[0] = 'bare-engine'; main()"


class ServerThread:
    """uvicorn serving ``create_app(engine, **app_kwargs)`` on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, engine, start_timeout: float = 30.0, shutdown_timeout: float = 5.0, **app_kwargs):
        from bare_engine.serve.app import create_app
        from bare_engine.serve.server import bind_socket, make_server

        self.app = create_app(engine, **app_kwargs)
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.server = make_server(self.app, shutdown_timeout, log_level="warning")
        self.start_timeout = start_timeout
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def engine_loop(self):
        return self.app.state.serve.engine_loop

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sock.close()
        if self._thread.is_alive():
            raise RuntimeError("the in-process server did not stop")

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess:
    """`bare-engine serve ARGS` in a child process (``--port 0`` picks a free port; the URL is read
    from its first line). Output is drained by a thread, so the child never blocks on a full pipe."""

    def __init__(self, args: list[str], env: dict | None = None, start_timeout: float = 120.0):
        self.args, self.start_timeout = args, start_timeout
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        self.lines: list[str] = []
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self._url_seen = threading.Event()

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", *self.args], env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = URL_LINE.match(self.lines[-1])
            if match and self.url is None:
                self.url = match.group(1)
                self._url_seen.set()
        self._url_seen.set()  # the child ended

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        if not self._url_seen.wait(self.start_timeout) or self.url is None:
            raise RuntimeError("server did not start:\n" + self.output_tail())
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + self.output_tail())
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy:\n" + self.output_tail())

    def output_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:])

    def terminate(self) -> None:
        """Ask for a graceful shutdown (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL past ``timeout``; the exit status."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        self.stop()
