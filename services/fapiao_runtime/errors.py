"""Domain errors with a machine-readable reason, mapped to gRPC status codes at the edge.

Handlers raise these; the gRPC runtime (`grpc_server`) turns them into a status with details
"<REASON>: <message>", the trailing metadata key `fapiao-reason`, and the standard rich status
(`grpc-status-details-bin`: a `google.rpc.Status` holding a `google.rpc.ErrorInfo`, plus a
`google.rpc.RetryInfo` on UNAVAILABLE) that grpcio-status, grpcurl and other gRPC clients decode.
Anything else becomes INTERNAL without leaking the exception text.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

# The `domain` of every ErrorInfo a Fapiao service sends: reasons are unique within it.
ERROR_DOMAIN = "fapiao.network"
# Seconds a client is asked to wait before retrying after UNAVAILABLE (gRPC RetryInfo) or 503 (HTTP
# Retry-After): a lost dependency comes back or fails over in seconds.
RETRY_AFTER_S = 5
# The trailing metadata key of the rich status (grpcio-status's GRPC_DETAILS_METADATA_KEY).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class FapiaoError(Exception):
    """Base of every expected failure. `reason` is a stable UPPER_SNAKE code; `message` is for humans."""

    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    http_status: int = 500

    def __init__(self, reason: str, message: str = "", *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason.replace("_", " ").lower()
        # Extra ErrorInfo metadata for clients (no secrets: it travels to the caller as it is).
        self.metadata: dict[str, str] = dict(metadata or {})

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


def rich_status(
    code: grpc.StatusCode, details: str, reason: str, metadata: Mapping[str, str], retry_after_s: int | None = None
) -> bytes:
    """The serialized `google.rpc.Status` sent as `grpc-status-details-bin` with a status: `code` and
    `details` exactly as the call's own (clients check they match), an ErrorInfo(reason, ERROR_DOMAIN,
    metadata), and a RetryInfo when `retry_after_s` is given."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=dict(metadata)))
    details_any = [info]
    if retry_after_s is not None:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s)))
        details_any.append(retry)
    status = status_pb2.Status(code=code.value[0], message=details, details=details_any)
    return bytes(status.SerializeToString())


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a client-side gRPC error's rich status, or None when it carries none."""
    for key, value in getattr(error, "trailing_metadata", lambda: ())() or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


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
