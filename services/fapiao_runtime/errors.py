"""Domain errors with a machine-readable reason, mapped to gRPC status codes at the edge.

Handlers raise these; the gRPC interceptor turns them into a status with details
"<REASON>: <message>" and the trailing metadata key `fapiao-reason`. Anything else becomes
INTERNAL without leaking the exception text.
"""

from __future__ import annotations

import errno

import grpc


class FapiaoError(Exception):
    """Base of every expected failure. `reason` is a stable UPPER_SNAKE code; `message` is for humans."""

    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    http_status: int = 500

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason.replace("_", " ").lower()

    @property
    def details(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(FapiaoError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(FapiaoError):
    status_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(FapiaoError):
    status_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class FailedPrecondition(FapiaoError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class PermissionDenied(FapiaoError):
    status_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unauthenticated(FapiaoError):
    status_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class ResourceExhausted(FapiaoError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class DeadlineExceeded(FapiaoError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unavailable(FapiaoError):
    status_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


def reason_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> str:
    """Extract the reason code from a client-side gRPC error raised by a Fapiao server."""
    details = error.details() if hasattr(error, "details") else ""
    return (details or "").split(":", 1)[0]


def unavailable_cause(exc: BaseException) -> str | None:
    """The dependency whose loss `exc` shows ("database", "kafka" or "upstream"), else None.

    A lost dependency is not a defect: callers answer UNAVAILABLE (gRPC) or 503 (HTTP) and retry later,
    where any other unexpected exception is INTERNAL / 500. The exception's causes are followed, so a
    wrapped connection error is recognised too.
    """
    import asyncpg
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            asyncpg.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.InsufficientResourcesError
            | asyncpg.exceptions.ConnectionDoesNotExistError,
        ):
            return "database"
        if isinstance(current, asyncpg.InterfaceError) and ("connection" in str(current) or "pool" in str(current)):
            return "database"
        if isinstance(current, asyncpg.exceptions.InternalClientError) or (
            isinstance(current, asyncpg.exceptions.ObjectNotInPrerequisiteStateError)
            and "accepting connections" in str(current)
        ):
            return "database"  # a connection cut mid-statement, or a database closed to connections
        if isinstance(current, KafkaTimeoutError) or (isinstance(current, KafkaError) and current.retriable):
            return "kafka"
        if isinstance(current, grpc.aio.AioRpcError) and current.code() in _UPSTREAM_CODES:
            return "upstream"
        if isinstance(current, OSError):
            # A refused, reset or unroutable connection names no peer: the code that raised it does. Any
            # socket error inside a database or Kafka client is that dependency's loss (a blackhole route
            # makes connect fail with EINVAL); elsewhere only the network's own errors count.
            origin = _raised_in(current)
            if origin is not None:
                return "database" if origin == "asyncpg" else "kafka"
            if isinstance(current, ConnectionError | TimeoutError) or current.errno in _NETWORK_ERRNOS:
                return "upstream"
        current = current.__cause__ or current.__context__
    return None


def _raised_in(exc: BaseException) -> str | None:
    """ "asyncpg" or "aiokafka" when `exc` was raised through that client library, else None."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        for library in ("asyncpg", "aiokafka"):
            if module == library or module.startswith(library + "."):
                found = library
        tb = tb.tb_next
    return found


_NETWORK_ERRNOS = frozenset(
    {errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ECONNABORTED}
)
_UPSTREAM_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
