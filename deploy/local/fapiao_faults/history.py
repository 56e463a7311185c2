"""The recorded history: one JSON line per client operation, with its outcome as the client saw it.

An outcome is "ok" (acknowledged), "fail" (a definite refusal: nothing changed) or "unknown" (the
client cannot tell: the service was unreachable, the call timed out, or the answer was a server error).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"

# Operation kinds.
PAY_WEBHOOK = "pay_webhook"
PAY_GRPC = "pay_grpc"
CLAIM = "claim"
LOCK = "lock"
UNLOCK = "unlock"
CLOSE = "close"
OP_KINDS = (PAY_WEBHOOK, PAY_GRPC, CLAIM, LOCK, UNLOCK, CLOSE)

# A definite refusal: the service decided and changed nothing.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Codes that say a server is broken rather than busy or unreachable: no client may ever see them.
FORBIDDEN_CODES = frozenset({"INTERNAL", "UNKNOWN", "HTTP 500"})


def outcome_of_code(code: grpc.StatusCode) -> str:
    """ok / fail / unknown for a gRPC status code (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ... are unknown)."""
    if code == grpc.StatusCode.OK:
        return OK
    return FAIL if code in _REFUSALS else UNKNOWN


def outcome_of_http(status: int) -> str:
    """ok for 2xx, fail for 4xx (a refusal), unknown for 5xx or no answer."""
    if 200 <= status < 300:
        return OK
    return FAIL if 400 <= status < 500 else UNKNOWN


@dataclass
class Op:
    """One client operation. `key` identifies what it acted on (payment, invoice, organisation);
    `result` what an acknowledgement returned (payment id, invoice number, ledger transaction id)."""

    kind: str
    key: dict[str, str]
    start: float
    end: float = 0.0
    outcome: str = UNKNOWN
    code: str = ""
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    attempt: int = 1

    @property
    def latency_s(self) -> float:
        return max(0.0, self.end - self.start)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class HistoryWriter:
    """Appends operations to a JSON-lines file as they complete (thread-safe, flushed per line)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self.ops: list[Op] = []

    def record(self, op: Op) -> None:
        if not op.end:
            op.end = time.time()
        with self._lock:
            self.ops.append(op)
            self._handle.write(op.to_json() + "\n")
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_history(path: Path) -> list[Op]:
    return list(parse_history(path.read_text(encoding="utf-8").splitlines()))


def parse_history(lines: Iterable[str]) -> Iterator[Op]:
    for line in lines:
        if line.strip():
            yield Op.from_dict(json.loads(line))
