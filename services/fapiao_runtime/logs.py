"""Structured JSON logging; the current request id, event id and trace id appear in every line."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fapiao_runtime import tracing
from fapiao_runtime.workers import worker_index

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
event_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("event_id", default="")

_SERVICE = {"name": "fapiao"}
# {"worker": n} in a service run as several worker processes (fapiao_runtime.workers), else empty.
_WORKER: dict[str, int] = {}
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def service_label() -> str:
    """The name of the service this process runs (set by `configure_logging`)."""
    return _SERVICE["name"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, request_id, event_id, trace_id (the W3C
    trace id of the request or event being handled: `tracing`), extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": _SERVICE["name"],
            **_WORKER,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
            "event_id": event_id_var.get(),
            "trace_id": tracing.trace_id(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, str)) or value is None else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Client libraries that log every retry of a lost connection (aiokafka every 100 ms while a broker is
# down, asyncpg each time it fails to refill its pool): each of their messages once per window.
REPEATING_LOGGERS = ("aiokafka", "asyncpg")
REPEAT_WINDOW_S = 60.0


class RepeatFilter(logging.Filter):
    """Lets a message of `REPEATING_LOGGERS` through once per `window_s` (by logger and message template),
    so an outage leaves a few lines in the log instead of one per retry."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(REPEATING_LOGGERS):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._window_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def configure_logging(service_name: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr for the whole process. Safe to call more than once."""
    _SERVICE["name"] = service_name
    index = worker_index()
    _WORKER.clear()
    _WORKER.update({} if index is None else {"worker": index})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
