"""Bounds on the work one HTTP request can cause, checked before the work is done.

The body is read up to ``max_body_bytes`` (a larger Content-Length is refused before reading);
prompt text longer than ``max_prompt_chars`` is refused before tokenizing. Connections are bounded
too: a new connection must send its request head within ``header_timeout`` seconds, headers are
at most ``max_header_bytes`` (431), an idle keep-alive connection closes after
``timeout_keep_alive`` seconds, and past ``limit_concurrency`` connections uvicorn answers 503.
"""

from __future__ import annotations

from dataclasses import dataclass

from bare_engine.serve.protocol import APIError, bad_request


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_prompt_chars: int = 1_000_000
    limit_concurrency: int = 1024  # open connections (and tasks) before uvicorn answers 503
    timeout_keep_alive: int = 5  # seconds an idle keep-alive connection stays open
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # seconds a new connection gets to send its first request head

    def uvicorn_options(self) -> dict:
        from uvicorn.protocols.http.h11_impl import H11Protocol  # the serve extra: imported when serving

        timeout = self.header_timeout

        class H11WithHeaderTimeout(H11Protocol):
            """uvicorn's h11 protocol, closing a new connection that sends no complete request head in time
            (a slow-headers client would otherwise hold its connection forever)."""

            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                self.loop.call_later(timeout, self._head_deadline)

            def _head_deadline(self) -> None:
                if self.cycle is None and not self.transport.is_closing():
                    self.transport.close()

        return dict(limit_concurrency=self.limit_concurrency, timeout_keep_alive=self.timeout_keep_alive,
                    h11_max_incomplete_event_size=self.max_header_bytes, http=H11WithHeaderTimeout)


class HeaderSizeLimit:
    """ASGI middleware: a 431 for request headers over ``max_bytes`` (h11 bounds only a head that
    arrives in pieces)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                error = APIError(431, f"request headers of {size} bytes exceed the limit of {self.max_bytes}",
                                 code="headers_too_large")
                from starlette.responses import JSONResponse

                await JSONResponse(error.body(), status_code=431)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body of {size} bytes exceeds the limit of {limit} bytes "
                         "(bare-engine serve --max-body-bytes)", code="request_too_large")


def check_prompt_chars(texts: list[str], limit: int, param: str) -> None:
    """400 when the prompt text is longer than ``limit`` characters (checked before tokenizing)."""
    total = sum(len(t) for t in texts)
    if total > limit:
        raise bad_request(f"the prompt has {total} characters; the limit is {limit} "
                          "(bare-engine serve --max-prompt-chars)", param=param)
