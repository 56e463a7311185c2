"""What every HTTP edge (the gateway, payment_intake's webhook) shares: how its server is run and how it
answers a request it cannot serve.

- `SERVER_ARGS` go to `web.AppRunner` / `web.run_app`: request bodies are never decompressed by the
  server (a compressed body is refused by the handler with its reason, so a decompression bomb or an
  unknown encoding costs nothing), and requests the HTTP parser refuses (a malformed request line, a
  header line over 8 KiB, bad chunking) are logged as one line at info with their reason, never a
  traceback: they are the client's error, answered 400 by aiohttp.
- `retry_later` is the answer to a lost dependency: 503 with Retry-After, so clients (browsers, the
  payment platform) come back instead of treating it as a failure.
- `trace_context` is the middleware that serves each request in its W3C trace context (the request's
  `traceparent` header continued, else a new trace: `fapiao_runtime.tracing`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from fapiao_runtime import tracing
from fapiao_runtime.errors import RETRY_AFTER_S

IDENTITY_ENCODINGS = frozenset({"", "identity"})
R = TypeVar("R", bound=web.StreamResponse)


def client_fault(error: BaseException | None) -> bool:
    """Whether `error`, raised while aiohttp read a request, is the client's doing (a 4xx)."""
    if isinstance(error, HttpProcessingError):
        return 400 <= (error.code or 400) < 500
    return isinstance(error, RequestPayloadError | ConnectionResetError)


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger: the client's errors as one info line naming them; the rest unchanged."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if client_fault(error):
            # The exception text can quote the request line, and paths carry bearer tokens: name the class.
            status = getattr(error, "code", 400) or 400
            self.info("request refused by the HTTP parser: %s %s", status, type(error).__name__)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_ARGS: dict[str, Any] = {
    "auto_decompress": False,
    "logger": _ServerLog(logging.getLogger("aiohttp.server"), {}),
}


def content_encoding(request: web.BaseRequest) -> str | None:
    """The request's Content-Encoding when it is not identity (the edges accept no compressed body)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return None if encoding in IDENTITY_ENCODINGS else encoding


def retry_later(response: R, seconds: int = RETRY_AFTER_S) -> R:
    """`response` (a 503) with the Retry-After header set."""
    response.headers["Retry-After"] = str(seconds)
    return response


@web.middleware
async def trace_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Serve the request in its trace: log lines, events and gRPC calls it causes carry its trace id."""
    token = tracing.begin(request.headers.get(tracing.TRACEPARENT, ""))
    try:
        return await handler(request)
    finally:
        tracing.end(token)
