"""The one thread that drives LLMEngine.step().

HTTP handlers never touch the engine: they put submissions and aborts into an inbox, which
this thread drains between steps. After each step it hands the step's events (new tokens of
streamed requests, finished outputs, errors) to ``deliver`` in one batch of (sink, event)
pairs; the server's ``deliver`` makes one ``loop.call_soon_threadsafe`` hop per step to run
the sinks on its event loop (a hop per request would make this thread wait for the GIL
once per request and step).

The waiting queue is bounded: a submission that would take the number of waiting sequences
(in the inbox or the scheduler's waiting lists) past ``max_waiting`` is refused with
``QueueFullError``, which the server answers with a 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bare_engine.outputs import RequestOutput
from bare_engine.sampling_params import SamplingParams
from bare_engine.serve import engine_view
from bare_engine.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # how long the idle loop sleeps before looking at the inbox again
JOIN_TIMEOUT_S = 30.0


class QueueFullError(Exception):
    """The waiting queue is full (or the loop is shutting down): try again later."""


@dataclass
class Submission:
    request_id: str
    model: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sink: Callable[[object], None]  # called (through ``deliver``) with the events below
    stream: bool = False
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class Progress:
    """New output tokens of a streamed request, per sample (empty for a sample with none)."""

    request_id: str
    new_token_ids: list[list[int]]


@dataclass
class Finished:
    request_id: str
    output: RequestOutput


@dataclass
class Failed:
    request_id: str
    error: Exception


@dataclass
class Aborted:
    """The server stopped before the request finished."""

    request_id: str


@dataclass
class _Abort:
    request_ids: list[str]


@dataclass
class _Active:
    submission: Submission
    starts: list[int]  # output tokens already handed to the sink (or seen), per sample
    first_token_at: float | None = None


class EngineLoop:
    def __init__(self, engine, metrics: ServeMetrics | None = None, max_waiting: int = 256):
        self.engine = engine
        self.metrics = metrics or ServeMetrics(engine.model_names)
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._inbox: list[Submission | _Abort] = []
        self._num_waiting = 0  # sequences in the inbox or the scheduler's waiting lists (under _cond)
        self._closed = False
        self._stop = threading.Event()
        self._active: dict[str, _Active] = {}  # loop thread only
        self._outbox: list[tuple[Callable, object]] = []  # loop thread only: this iteration's events
        self.deliver: Callable[[list[tuple[Callable, object]]], None] = run_sinks
        self._thread = threading.Thread(target=self._run, name="bare-engine-loop", daemon=True)

    # ----- any thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, submissions: list[Submission]) -> None:
        """Queue all of ``submissions`` or none (QueueFullError)."""
        num_seqs = sum(s.params.n for s in submissions)
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if self._num_waiting + num_seqs > self.max_waiting:
                self.metrics.rejected.inc()
                raise QueueFullError(
                    f"the waiting queue is full ({self._num_waiting} of {self.max_waiting} sequences waiting); "
                    "retry later"
                )
            self._inbox.extend(submissions)
            self._num_waiting += num_seqs
            self._cond.notify()

    def abort(self, request_ids: list[str]) -> None:
        """Abort requests (unknown or finished ids are ignored); their KV blocks are freed before the next step."""
        with self._cond:
            self._inbox.append(_Abort(list(request_ids)))
            self._cond.notify()

    def request_stop(self) -> None:
        """Ask the thread to abort what is in flight (each gets an Aborted event) and end; returns at once."""
        self._stop.set()
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Abort what is still in flight (each gets an Aborted event) and end the thread."""
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("engine loop did not stop within %.0f s", timeout)

    # ----- the loop thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply(self._take_commands())
                if self.engine.has_unfinished_requests():
                    self._step()
                self._after_iteration()
                self._flush()
        except Exception:
            logger.exception("engine loop failed")
        finally:
            self._abort_all()
            self._flush()

    def _take_commands(self) -> list:
        with self._cond:
            if not self._inbox and not self.engine.has_unfinished_requests():
                self._cond.wait(IDLE_WAIT_S)
            commands, self._inbox = self._inbox, []
        return commands

    def _apply(self, commands: list) -> None:
        for command in commands:
            if isinstance(command, _Abort):
                for request_id in command.request_ids:
                    self._abort(request_id)
                continue
            try:
                self.engine.add_request(command.request_id, command.prompt_token_ids, command.params,
                                        model=command.model)
            except Exception as exc:  # a bad request the server's own checks let through
                self._emit(command.sink, Failed(command.request_id, exc))
                continue
            self._active[command.request_id] = _Active(command, [0] * command.params.n)

    def _abort(self, request_id: str) -> None:
        active = self._active.pop(request_id, None)
        if active is None:
            return
        progress = engine_view.request_progress(self.engine, request_id, active.starts) or []
        self.engine.abort_request(request_id)
        self._observe(active, "abort", sum(p.num_output_tokens for p in progress))

    def _step(self) -> None:
        try:
            finished = self.engine.step()
        except Exception as exc:  # an engine bug: fail what is in flight, keep serving
            logger.exception("engine step failed")
            for request_id, active in list(self._active.items()):
                self.engine.abort_request(request_id)
                self._emit(active.submission.sink, Failed(request_id, exc))
            self._active.clear()
            return
        now = time.monotonic()
        for output in finished:
            active = self._active.pop(output.request_id)
            active.first_token_at = active.first_token_at or now
            self._observe(active, output.outputs[0].finish_reason, sum(len(o.token_ids) for o in output.outputs),
                          max(len(o.token_ids) for o in output.outputs))
            self._emit(active.submission.sink, Finished(output.request_id, output))
        for request_id, active in self._active.items():
            self._report_progress(request_id, active, now)

    def _report_progress(self, request_id: str, active: _Active, now: float) -> None:
        progress = engine_view.request_progress(self.engine, request_id, active.starts)
        if not progress:
            return
        if active.first_token_at is None and any(p.num_output_tokens for p in progress):
            active.first_token_at = now
        active.starts = [p.num_output_tokens for p in progress]
        if active.submission.stream:
            new = [[] if p.finished else p.new_token_ids for p in progress]
            if any(new):
                self._emit(active.submission.sink, Progress(request_id, new))

    def _observe(self, active: _Active, reason: str, num_output_tokens: int, longest: int = 0) -> None:
        now, sub = time.monotonic(), active.submission
        first = active.first_token_at
        self.metrics.observe_finished(
            sub.model, reason, len(sub.prompt_token_ids), num_output_tokens, now - sub.arrival,
            ttft=None if first is None else first - sub.arrival,
            tpot=(now - first) / (longest - 1) if first is not None and longest > 1 else None,
        )

    def _emit(self, sink: Callable, event: object) -> None:
        self._outbox.append((sink, event))

    def _flush(self) -> None:
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        try:
            self.deliver(batch)
        except Exception:  # the receiving side is gone (e.g. its event loop closed)
            logger.debug("dropped %d events: their receiver is gone", len(batch), exc_info=True)

    def _after_iteration(self) -> None:
        self.metrics.observe_engine(self.engine)
        waiting = engine_view.num_waiting_sequences(self.engine)
        with self._cond:
            self._num_waiting = waiting + sum(c.params.n for c in self._inbox if isinstance(c, Submission))

    def _abort_all(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._inbox = self._inbox, []
        for command in pending:
            if isinstance(command, Submission):
                self._emit(command.sink, Aborted(command.request_id))
        for request_id, active in list(self._active.items()):
            self._abort(request_id)
            self._emit(active.submission.sink, Aborted(request_id))
        self.metrics.observe_engine(self.engine)


def run_sinks(batch: list[tuple[Callable, object]]) -> None:
    for sink, event in batch:
        sink(event)
