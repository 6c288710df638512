"""One HTTP request's engine requests (one per prompt), seen from the asyncio side.

Events come from the engine loop thread, one ``call_soon_threadsafe`` per step, into an
asyncio queue per HTTP request. Every wait is bounded: the queue is polled so that a disconnected client or a dead
engine loop is noticed, and whatever is still open when the handler leaves (client gone,
error, cancellation) is aborted, which frees its KV blocks before the next step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bare_engine.errors import BareEngineError
from bare_engine.outputs import RequestOutput
from bare_engine.sampling_params import SamplingParams
from bare_engine.serve.engine_loop import Aborted, EngineLoop, Failed, Finished, Progress, QueueFullError, Submission
from bare_engine.serve.models import ServedModel
from bare_engine.serve.protocol import APIError, bad_request
from bare_engine.serve.streaming import TextStream

POLL_S = 0.25  # how often a waiting handler checks for a disconnected client / a dead loop


class ClientDisconnected(Exception):
    pass


@dataclass
class Delta:
    index: int  # the choice: prompt index * n + sample index
    text: str
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class Generation:
    def __init__(self, engine_loop: EngineLoop, model: ServedModel, prompts: list[list[int]],
                 params: SamplingParams, stream: bool, prefix: str):
        self.engine_loop, self.model, self.params, self.stream = engine_loop, model, params, stream
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.request_ids = [f"{self.id}-{i}" for i in range(len(prompts))]
        self.prompts = prompts
        self.outputs: dict[str, RequestOutput] = {}
        self.open: set[str] = set()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._texts = {rid: [TextStream(model.tokenizer, params.stop_strings, params.skip_special_tokens)
                             for _ in range(params.n)] for rid in self.request_ids} if stream else {}

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c.token_ids) for out in self.outputs.values() for c in out.outputs)

    def submit(self) -> None:
        num_seqs = len(self.prompts) * self.params.n
        if num_seqs > self.engine_loop.max_waiting:
            raise bad_request(f"{num_seqs} sequences (prompts x n) can never fit the waiting queue of "
                              f"{self.engine_loop.max_waiting}", param="n")
        subs = [Submission(rid, self.model.name, ids, self.params, self._sink, self.stream)
                for rid, ids in zip(self.request_ids, self.prompts)]
        try:
            self.engine_loop.submit(subs)
        except QueueFullError as exc:
            raise APIError(503, str(exc), type="server_error", code="server_overloaded") from None
        self.open = set(self.request_ids)

    def _sink(self, event) -> None:  # on the event loop (see create_app's deliver)
        self._queue.put_nowait(event)

    def abort_open(self) -> None:
        if self.open:
            self.engine_loop.abort(sorted(self.open))
            self.open.clear()

    async def next_event(self, request=None):
        """The next event; checks every POLL_S that the client (when given) and the engine loop are there."""
        while True:
            try:
                return await asyncio.wait_for(self._queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise ClientDisconnected() from None
                if not self.engine_loop.is_alive():
                    raise APIError(500, "the engine loop has stopped", type="server_error") from None

    async def results(self, request) -> list[RequestOutput]:
        """Wait for every prompt's output, in prompt order (non-streamed requests)."""
        try:
            while self.open:
                self._take(await self.next_event(request))
        finally:
            self.abort_open()
        return [self.outputs[rid] for rid in self.request_ids]

    def _take(self, event) -> None:
        if isinstance(event, Finished):
            self.outputs[event.request_id] = event.output
            self.open.discard(event.request_id)
        elif isinstance(event, Failed):
            raise _api_error(event.error)
        elif isinstance(event, Aborted):
            raise APIError(503, "the server is shutting down", type="server_error")

    async def first_event(self, request):
        """The first event of a streamed request: errors before any token still get their 4xx."""
        try:
            event = await self.next_event(request)
            if isinstance(event, (Failed, Aborted)):
                self._take(event)
            return event
        except BaseException:
            self.abort_open()
            raise

    async def deltas(self, first) -> AsyncIterator[Delta]:
        """Text deltas of every choice, starting from ``first`` (see first_event)."""
        event = first
        try:
            while True:
                for delta in self._deltas_of(event):
                    yield delta
                if not self.open:
                    return
                event = await self.next_event()
        finally:
            self.abort_open()

    def _deltas_of(self, event) -> list[Delta]:
        n = self.params.n
        base = self.request_ids.index(event.request_id) * n
        texts = self._texts[event.request_id]
        if isinstance(event, Progress):
            deltas = [Delta(base + i, texts[i].add(ids)) for i, ids in enumerate(event.new_token_ids) if ids]
            return [d for d in deltas if d.text]
        if isinstance(event, Aborted):
            self.open.discard(event.request_id)
            return [Delta(base + i, "", "abort") for i in range(n)]
        self._take(event)  # Finished, or raises for Failed
        return [Delta(base + c.index, texts[c.index].finish(c.text), c.finish_reason, c.stop_reason)
                for c in event.output.outputs]


def _api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BareEngineError):
        return APIError(400, str(exc), param=getattr(exc, "param", None))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
