"""Start the server: the models to serve, the listening socket, uvicorn and its graceful shutdown.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and gives in-flight requests
``shutdown_timeout`` seconds to finish; then the engine loop aborts what is left: streams end
with finish_reason "abort" and [DONE], non-streamed requests get a JSON 503 (uvicorn would
cut them mid-chunk), the app's lifespan stops the engine loop and the process exits 0.
Nothing outlives the process: the engine loop is a thread of it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from bare_engine.errors import ConfigError

ABORT_GRACE_S = 10.0  # after the abort, how long the aborted responses get to be written before uvicorn cancels


def make_server(app, shutdown_timeout: float, log_level: str = "info", limits=None):
    """A uvicorn Server for ``app`` (create_app) with the connection limits and the abort-on-timeout shutdown."""
    import uvicorn

    class AbortingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            stop = app.state.serve.engine_loop.request_stop
            timer = asyncio.get_running_loop().call_later(shutdown_timeout, stop)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    limits = limits or app.state.serve.limits
    return AbortingServer(uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout + ABORT_GRACE_S, lifespan="on",
        **limits.uvicorn_options(),
    ))


def model_dirs(base: str | None, instruct: str | None, named: tuple[str, ...] | list[str]) -> dict[str, str]:
    """name -> model directory; the bundled demo pair when no model is named."""
    models: dict[str, str] = {}
    for name, path in (("base", base), ("instruct", instruct)):
        if path is not None:
            models[name] = path
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--model takes NAME=DIR, got {item!r}")
        if name in models:
            raise ConfigError(f"model name {name!r} is given twice")
        models[name] = path
    if not models:
        from bare_engine.demo import BASE_MODEL_DIR, INSTRUCT_MODEL_DIR

        models = {"base": str(BASE_MODEL_DIR), "instruct": str(INSTRUCT_MODEL_DIR)}
    for name, path in models.items():
        if not (Path(path) / "config.json").is_file() and not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"model {name!r} not found: {path} has no config.json")
    return models


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) socket, so a taken port fails before the models load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def run_server(models: dict[str, str], config, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, max_waiting: int = 256, shutdown_timeout: float = 30.0,
               log_level: str = "info", generation_config: str = "auto", limits=None) -> None:
    if max_waiting < 1:
        raise ConfigError(f"--max-waiting must be at least 1, got {max_waiting}")
    for name, value in (vars(limits) if limits is not None else {}).items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    sock = bind_socket(host, port)
    try:
        try:
            import uvicorn  # noqa: F401

            from bare_engine.serve.app import create_app
        except ImportError as exc:
            raise ConfigError(f"bare-engine serve needs the serve extra (pip install 'bare-engine[serve]'): {exc}") \
                from None
        from bare_engine.engine.llm_engine import LLMEngine

        with LLMEngine(models, config) as engine:  # exiting stops tensor-parallel workers
            app = create_app(engine, api_key=api_key, max_waiting=max_waiting, generation_config=generation_config,
                             limits=limits)
            server = make_server(app, shutdown_timeout, log_level)
            bound_host, bound_port = sock.getsockname()[:2]
            print(f"serving {', '.join(models)} on http://{bound_host}:{bound_port}", flush=True)
            # uvicorn takes SIGTERM over while it runs and raises it again once it has shut down;
            # this handler then makes that a normal exit.
            signal.signal(signal.SIGTERM, _exit_cleanly)
            server.run(sockets=[sock])
    finally:
        sock.close()


def _exit_cleanly(signum, frame) -> None:
    sys.exit(0)
