"""W3C trace context (https://www.w3.org/TR/trace-context/): the `traceparent` of the request being served.

A gRPC call (metadata `traceparent`) or an HTTP request (header `traceparent`) that carries one continues
its trace; one without starts a new trace. While the request is served, `current()` is a traceparent
with the request's trace id and a span id of its own: `envelope.make_envelope` writes it into every event
the request causes, `logs.JsonFormatter` writes its trace id into every log line, and internal gRPC
channels (`grpc_client.internal_channel`) send it onward. A consumer that applies an event continues the
event's trace (`continued_from`), so what it logs and the events it produces carry the same trace id.

The context lives in a contextvar: each request's task sees its own. Ids are random but not secret (the
standard asks for uniqueness, not unpredictability), drawn without a system call.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
from collections.abc import Iterator, Sequence

TRACEPARENT = "traceparent"
# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>", lower case. A later version may
# append fields after a dash; its first four are read the same way (the standard's forward compatibility).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
SAMPLED = "01"

# The traceparent of the work under way in this task: "" outside any request or event.
_current: contextvars.ContextVar[str] = contextvars.ContextVar("traceparent", default="")
_random = random.Random()  # ids need uniqueness, not secrecy


def parse(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid traceparent header value, else None (ignored, as the
    standard says: the request then starts a new trace)."""
    match = _TRACEPARENT.fullmatch(value.strip()) if value and len(value) <= 512 else None
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _INVALID_TRACE_ID or parent_id == _INVALID_SPAN_ID:
        return None
    return trace_id, parent_id, flags


def _span_id() -> str:
    return f"{_random.getrandbits(64) or 1:016x}"


def child_of(traceparent: str) -> str:
    """A traceparent for new work caused by `traceparent`: the same trace id and flags with a new span id;
    a new sampled trace when `traceparent` is empty or invalid."""
    parsed = parse(traceparent)
    if parsed is None:
        return f"00-{_random.getrandbits(128) or 1:032x}-{_span_id()}-{SAMPLED}"
    trace_id, _, flags = parsed
    return f"00-{trace_id}-{_span_id()}-{flags}"


def current() -> str:
    """The traceparent of the work under way ("" outside any request or event)."""
    return _current.get()


def trace_id() -> str:
    """The trace id of the work under way ("" outside any request or event)."""
    value = _current.get()
    return value[3:35] if value else ""


def trace_id_of(traceparent: str) -> str:
    """The trace id of `traceparent` ("" when it is not a valid one)."""
    parsed = parse(traceparent)
    return parsed[0] if parsed else ""


def begin(incoming: str) -> contextvars.Token[str]:
    """Enter the span of a request that arrived with `incoming` (its traceparent, or ""); pass the token
    to `end` when the request is done."""
    return _current.set(child_of(incoming))


def end(token: contextvars.Token[str]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def continued_from(traceparent: str) -> Iterator[str]:
    """Within the block, work continues the trace of `traceparent` (an event's): a consumer wraps the
    handling of each event in it. An event without a trace context starts a new trace."""
    token = begin(traceparent)
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The `traceparent` of gRPC invocation metadata ("" when absent)."""
    for key, value in metadata or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""
