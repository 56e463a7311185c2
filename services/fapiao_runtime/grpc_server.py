"""gRPC server bootstrap on grpc.aio: one request decoding policy, health service, reflection, request ids, error
mapping, TLS."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from fapiao_runtime import tracing
from fapiao_runtime.errors import (
    RETRY_AFTER_S,
    STATUS_DETAILS_KEY,
    FapiaoError,
    InvalidArgument,
    PermissionDenied,
    rich_status,
    unavailable_cause,
)
from fapiao_runtime.logs import request_id_var, service_label
from fapiao_runtime.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
    REJECTIONS,
)
from fapiao_runtime.pki import service_name
from fapiao_runtime.text import check_message_text

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS material (PEM). With client_ca_pem set, clients must present a certificate it signed;
    with allowed_clients too, only service certificates (`pki.issue_service_certificate`) naming one
    of those services may call the server's methods (health and reflection stay open to the CA's
    certificates). method_clients narrows single methods (by name, e.g. "RotateIssuerKey") further to
    the services listed for them."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None
    allowed_clients: frozenset[str] = frozenset()
    method_clients: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.allowed_clients or self.method_clients) and self.client_ca_pem is None:
            raise ValueError("allowed clients need a client CA (mutual TLS)")

    @classmethod
    def from_env(cls, prefix: str = "FAPIAO_GRPC_TLS") -> TlsConfig | None:
        """`{prefix}_CERT_FILE`, `_KEY_FILE`, optional `_CLIENT_CA_FILE` (PEM paths) and optional
        `_ALLOWED_CLIENTS` (comma-separated service names) and `_METHOD_CLIENTS` (`Method=a,b;Other=c`);
        None when no certificate is configured. A certificate without its key, or allowed clients
        without a client CA, is a configuration error."""
        cert = os.environ.get(f"{prefix}_CERT_FILE", "")
        allowed = _names(os.environ.get(f"{prefix}_ALLOWED_CLIENTS", ""))
        methods = parse_method_clients(os.environ.get(f"{prefix}_METHOD_CLIENTS", ""), f"{prefix}_METHOD_CLIENTS")
        restricted = " and ".join(
            f"{prefix}_{name}" for name, value in (("ALLOWED_CLIENTS", allowed), ("METHOD_CLIENTS", methods)) if value
        )
        if not cert:
            if restricted:
                raise ValueError(f"{restricted} needs {prefix}_CERT_FILE and _CLIENT_CA_FILE")
            return None
        key = os.environ.get(f"{prefix}_KEY_FILE", "")
        if not key:
            raise ValueError(f"{prefix}_KEY_FILE is required with {prefix}_CERT_FILE")
        client_ca = os.environ.get(f"{prefix}_CLIENT_CA_FILE", "")
        if restricted and not client_ca:
            raise ValueError(f"{restricted} needs {prefix}_CLIENT_CA_FILE (mutual TLS)")
        return cls(
            Path(cert).read_bytes(),
            Path(key).read_bytes(),
            Path(client_ca).read_bytes() if client_ca else None,
            allowed,
            methods,
        )


def _names(value: str) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def parse_method_clients(value: str, setting: str = "method clients") -> dict[str, frozenset[str]]:
    """`Method=a,b;Other=c` -> {"Method": {"a", "b"}, "Other": {"c"}}; a malformed rule is an error."""
    rules: dict[str, frozenset[str]] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        method, sep, clients = part.partition("=")
        method, names = method.strip(), _names(clients)
        if not sep or not method or "/" in method or not names:
            raise ValueError(f"{setting}: expected Method=service[,service...], got {part.strip()!r}")
        if method in rules:
            raise ValueError(f"{setting}: {method} is listed twice")
        rules[method] = names
    return rules


@functools.lru_cache(maxsize=1024)
def _service_of(cert_pem: bytes) -> str | None:
    # Parsing X.509 costs more than the call; a connection presents the same certificate every time.
    return service_name(cert_pem)


class ClientPolicy:
    """Which verified clients may call the wrapped methods; set when the server starts with its TLS."""

    def __init__(self) -> None:
        self.allowed: frozenset[str] | None = None  # None: any client the transport accepted
        self.per_method: Mapping[str, frozenset[str]] = {}  # method name -> the only services it admits
        self.active = False

    def configure(self, tls: TlsConfig) -> None:
        self.allowed = tls.allowed_clients or None
        self.per_method = tls.method_clients
        self.active = bool(tls.allowed_clients or tls.method_clients)

    def check(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """`method`: the full name (/package.Service/Method)."""
        certs = (context.auth_context() or {}).get("x509_pem_cert") or []
        name = _service_of(bytes(certs[0])) if certs else None
        if self.allowed is not None and name not in self.allowed:
            raise PermissionDenied("CLIENT_NOT_ALLOWED", "this client certificate may not call this service")
        only = self.per_method.get(method.rsplit("/", 1)[-1])
        if only is not None and name not in only:
            raise PermissionDenied("METHOD_NOT_ALLOWED", "this client certificate may not call this method")


_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A request id unique across processes (random per process, then a counter): no syscall per call."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _incoming(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """The call's request id (the caller's `x-request-id`, else a new one) and its W3C `traceparent`."""
    request_id = traceparent = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            request_id = str(value)[:64]
        elif key == tracing.TRACEPARENT:
            traceparent = str(value)
    return request_id or new_request_id(), traceparent


class _CallContext:
    """The request id and trace context of one call, set for the call's task and reset at its end."""

    __slots__ = ("request_token", "trace_token")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        request_id, traceparent = _incoming(context)
        self.request_token = request_id_var.set(request_id)
        self.trace_token = tracing.begin(traceparent)

    def reset(self) -> None:
        tracing.end(self.trace_token)
        request_id_var.reset(self.request_token)


class _WrappingGenericHandler(grpc.GenericRpcHandler):
    """Wraps the handlers a generic handler returns, once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, policy: ClientPolicy | None) -> None:
        self._inner = inner
        self._policy = policy
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _wrap(method, handler, self._policy))
            self._wrapped[method] = cached
        return cached[1]


class _Registrar:
    """The `server` that generated `add_*Servicer_to_server` functions register on.

    Each method handler is wrapped once, at registration, with the request decoding policy, the
    request id, the error mapping and the metrics (`_wrap`): no server interceptor, which grpc.aio
    would await on every call. `policy` None: the methods are open to every client the transport
    accepted (health and reflection). The generated code
    registers a generic handler, then the same methods by name; the named ones are registered wrapped,
    for both lookups. A generic handler not followed by named methods is wrapped per method on first
    use.
    """

    def __init__(self, server: grpc.aio.Server, policy: ClientPolicy | None) -> None:
        self._server = server
        self._policy = policy
        self._pending: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._pending.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: _wrap(f"/{service_name}/{name}", h, self._policy) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, wrapped),))
        self._server.add_registered_method_handlers(service_name, wrapped)
        self._pending.clear()

    def close(self) -> None:
        if self._pending:
            self._server.add_generic_rpc_handlers([_WrappingGenericHandler(h, self._policy) for h in self._pending])
            self._pending.clear()


class _Refused:
    """What the decoding policy hands a method in place of a request it refused: the error to answer."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _decoding(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The one request decoding policy of every method: bytes that are not a valid message give
    MALFORMED_REQUEST, a string that is not UTF-8 or holds a character no text may hold (NUL, other
    control or invisible characters: `fapiao_runtime.text.check_message_text`) INVALID_CHARACTERS,
    never the decoder's own text. A refusal reaches the method wrapper as a `_Refused`, which answers
    INVALID_ARGUMENT (grpc would answer UNKNOWN for a raising deserializer and log a traceback)."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            request = deserialize(raw)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            if "UTF-8" in str(exc):
                return _Refused(InvalidArgument("INVALID_CHARACTERS", "a text field is not valid UTF-8"))
            return _Refused(InvalidArgument("MALFORMED_REQUEST", "the request is not a valid protobuf message"))
        if isinstance(request, Message):
            try:
                check_message_text(request)
            except InvalidArgument as exc:
                return _Refused(exc)
        return request

    return decode


def _accepted(request: Any) -> Any:
    if type(request) is _Refused:
        raise request.error
    return request


async def _accepted_stream(requests: AsyncIterator[Any], received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield _accepted(request)


def _trailers(
    code: grpc.StatusCode, details: str, reason: str, metadata: Mapping[str, str]
) -> tuple[tuple[str, str | bytes], ...]:
    """`fapiao-reason` and the rich status (ErrorInfo; RetryInfo on UNAVAILABLE) of an error answer."""
    retry = RETRY_AFTER_S if code == grpc.StatusCode.UNAVAILABLE else None
    return (("fapiao-reason", reason), (STATUS_DETAILS_KEY, rich_status(code, details, reason, metadata, retry)))


async def _answer(method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """Abort the call for `exc` (raises AbortError). A FapiaoError is its status with the reason, one log
    line at info; a lost dependency UNAVAILABLE; anything else INTERNAL without its text (logged with
    its traceback). Every answer carries an ErrorInfo (reason, domain, metadata: the service, the method
    and the error's own fields), UNAVAILABLE a RetryInfo too."""
    info = {"service": service_label(), "method": method}
    if isinstance(exc, FapiaoError):
        REJECTIONS.labels(method=method, reason=exc.reason).inc()
        log.info("request refused", extra={"method": method, "code": exc.status_code.name, "reason": exc.reason})
        await context.abort(
            exc.status_code,
            exc.details,
            trailing_metadata=_trailers(exc.status_code, exc.details, exc.reason, {**exc.metadata, **info}),
        )
        return
    cause = unavailable_cause(exc)
    if cause is None:
        log.error("unhandled error", extra={"method": method}, exc_info=exc)
        details = "INTERNAL: internal error"
        code = grpc.StatusCode.INTERNAL
        await context.abort(code, details, trailing_metadata=_trailers(code, details, "INTERNAL", info))
        return
    reason = f"{cause.upper()}_UNAVAILABLE"
    log.warning("dependency unavailable", extra={"method": method, "reason": reason, "error": repr(exc)})
    details = f"{reason}: the {cause} is unavailable; retry later"
    code = grpc.StatusCode.UNAVAILABLE
    trailers = _trailers(code, details, reason, {**info, "dependency": cause})
    await context.abort(code, details, trailing_metadata=trailers)


async def _close(method: str, responses: AsyncGenerator[Any, Any]) -> None:
    try:
        await responses.aclose()
    except Exception:
        log.exception("closing a response stream failed", extra={"method": method})


def _status_of(exc: Exception) -> str:
    if isinstance(exc, FapiaoError):
        return str(exc.status_code.name)
    return "INTERNAL" if unavailable_cause(exc) is None else "UNAVAILABLE"


# StatusCode names as Go's codes.Code.String() spells them (the grpc_code label of ready-made dashboards).
GRPC_CODE_LABELS = {
    code.name: "OK" if code is grpc.StatusCode.OK else "".join(part.capitalize() for part in code.name.split("_"))
    for code in grpc.StatusCode
}


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class _MethodMetrics:
    """The standard gRPC server metrics of one method, their label sets resolved once."""

    __slots__ = ("_handled", "_labels", "handling", "ok", "received", "sent", "started")

    def __init__(self, method: str, grpc_type: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (grpc_type, service, name)
        self.started = GRPC_STARTED.labels(*self._labels)
        self.received = GRPC_MSG_RECEIVED.labels(*self._labels)
        self.sent = GRPC_MSG_SENT.labels(*self._labels)
        self.handling = GRPC_HANDLING.labels(*self._labels)
        self.ok = GRPC_HANDLED.labels(*self._labels, "OK")

    def handled(self, code: str) -> Any:
        if code == "OK":
            return self.ok
        return GRPC_HANDLED.labels(*self._labels, GRPC_CODE_LABELS.get(code, "Unknown"))


def _wrap(method: str, handler: grpc.RpcMethodHandler, policy: ClientPolicy | None) -> grpc.RpcMethodHandler:
    """`handler` with the decoding policy, the client policy (None: open to every client the transport
    accepted, as health and reflection), the request id, the error mapping and the metrics."""
    decode = _decoding(handler.request_deserializer)
    metrics = _MethodMetrics(method, _grpc_type(handler))

    def admit(context: grpc.aio.ServicerContext) -> None:
        if policy is not None and policy.active:
            policy.check(context, method)

    def begin(streamed_in: bool) -> float:
        metrics.started.inc()
        if not streamed_in:
            metrics.received.inc()
        return time.perf_counter()

    def count(code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.handled(code).inc()
        metrics.handling.observe(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request handled", extra={"method": method, "code": code, "duration_ms": round(elapsed * 1e3, 3)})

    def failed(context: grpc.aio.ServicerContext) -> str:
        return str((context.code() or grpc.StatusCode.UNKNOWN).name)

    if handler.unary_unary or handler.stream_unary:
        inner_unary = handler.unary_unary or handler.stream_unary
        streamed_in = handler.unary_unary is None

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _CallContext(context)
            started = begin(streamed_in)
            code = "OK"
            try:
                admit(context)
                requests = _accepted_stream(request, metrics.received) if streamed_in else _accepted(request)
                response = await inner_unary(requests, context)
                metrics.sent.inc()
                return response
            except grpc.aio.AbortError:
                code = failed(context)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                code = _status_of(exc)
                await _answer(method, exc, context)
            finally:
                count(code, started)
                call.reset()

        make = grpc.stream_unary_rpc_method_handler if streamed_in else grpc.unary_unary_rpc_method_handler
        return make(unary, request_deserializer=decode, response_serializer=handler.response_serializer)
    if handler.unary_stream or handler.stream_stream:
        inner_stream = handler.unary_stream or handler.stream_stream
        streamed_in = handler.unary_stream is None

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            # Responses are written here (context.write), not yielded: a generator grpc stops consuming
            # when the client cancels would be closed later by the garbage collector, in another task
            # and context (its cleanup failing as "Task exception was never retrieved"). The method's
            # own generator is closed here, in this call's task, whatever ends the call.
            call = _CallContext(context)
            started = begin(streamed_in)
            code = "OK"
            responses: Any = None
            try:
                admit(context)
                requests = _accepted_stream(request, metrics.received) if streamed_in else _accepted(request)
                responses = inner_stream(requests, context)
                if inspect.isasyncgen(responses):
                    async for item in responses:
                        try:
                            await context.write(item)
                            metrics.sent.inc()
                        except cygrpc.ExecuteBatchError:
                            # The call ended under us (the client cancelled or went away): nothing to answer.
                            code = "CANCELLED"
                            log.info("stream ended by the client", extra={"method": method})
                            break
                else:  # a method that writes its responses itself (context.write), as health's Watch
                    await responses
            except grpc.aio.AbortError:
                code = failed(context)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                code = _status_of(exc)
                await _answer(method, exc, context)
            finally:
                if inspect.isasyncgen(responses):
                    await _close(method, responses)
                count(code, started)
                call.reset()

        make = grpc.stream_stream_rpc_method_handler if streamed_in else grpc.unary_stream_rpc_method_handler
        return make(stream, request_deserializer=decode, response_serializer=handler.response_serializer)
    return handler


class HealthServicer(health.aio.HealthServicer):
    """The standard health service, with `List` (which grpcio-health-checking's asyncio servicer leaves
    unimplemented although the service, and so reflection, declares it): every service's status."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()
            }
        )


class GrpcServer:
    """A grpc.aio server with the standard health service and reflection.

    Usage: server = GrpcServer([...service full names...]); server.add_servicer(add_XServicer_to_server, servicer);
    port = await server.start(host, port); ...; await server.stop(grace_s).
    """

    def __init__(
        self,
        service_names: Sequence[str],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_concurrent_rpcs: int = 1000,
        reuse_port: bool = False,
    ) -> None:
        # SO_REUSEPORT only for the workers of one service (fapiao_runtime.workers); otherwise a port
        # already in use must fail the bind instead of being silently shared with another process.
        self.server = grpc.aio.server(
            interceptors=list(interceptors) or None,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        self.health = HealthServicer()
        self._service_names = list(service_names)
        self.client_policy = ClientPolicy()
        # Health and reflection decode requests as every other method does, open to any client.
        self._register(health_pb2_grpc.add_HealthServicer_to_server, self.health, None)
        reflected = [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self._register(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            reflection.aio.ReflectionServicer([*reflected, reflection.SERVICE_NAME]),
            None,
        )
        self.port = 0
        self._ready_task: asyncio.Future[None] | None = None

    def _check_method_names(self, rules: Mapping[str, frozenset[str]]) -> None:
        """A rule naming no method of this server's services is a typo that would restrict nothing."""
        pool = descriptor_pool.Default()
        known = {m.name for name in self._service_names for m in pool.FindServiceByName(name).methods}
        unknown = sorted(set(rules) - known)
        if unknown:
            raise ValueError(f"method clients name methods this server lacks: {unknown}; it has {sorted(known)}")

    def add_servicer(self, add_to_server: Callable[[Any, Any], None], servicer: object) -> None:
        """Register `servicer` with its generated `add_*Servicer_to_server` function, every method
        wrapped with the request id, the FapiaoError mapping and the metrics."""
        self._register(add_to_server, servicer, self.client_policy)

    def _register(
        self, add_to_server: Callable[[Any, Any], None], servicer: object, policy: ClientPolicy | None
    ) -> None:
        registrar = _Registrar(self.server, policy)
        add_to_server(servicer, registrar)
        registrar.close()

    async def start(
        self, host: str, port: int, tls: TlsConfig | None = None, ready: asyncio.Event | None = None
    ) -> int:
        """Bind and start; returns the bound port (pass 0 to pick a free one). Marks every service SERVING,
        at once or, with `ready`, once it is set (NOT_SERVING until then)."""
        address = f"{host}:{port}"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.private_key_pem, tls.cert_chain_pem)],
                root_certificates=tls.client_ca_pem,
                require_client_auth=tls.client_ca_pem is not None,
            )
            self.port = self.server.add_secure_port(address, credentials)
            self._check_method_names(tls.method_clients)
            self.client_policy.configure(tls)
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC server to {address}")
        await self.server.start()
        if ready is None or ready.is_set():
            await self._mark_serving()
        else:
            for name in ["", *self._service_names]:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._ready_task = asyncio.ensure_future(self._serve_when(ready))
        log.info(
            "gRPC server started",
            extra={
                "address": f"{host}:{self.port}",
                "tls": tls is not None,
                "allowed_clients": ",".join(sorted(self.client_policy.allowed or ())),
                "method_clients": ";".join(
                    f"{m}={','.join(sorted(c))}" for m, c in sorted(self.client_policy.per_method.items())
                ),
            },
        )
        return self.port

    async def _mark_serving(self) -> None:
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _serve_when(self, ready: asyncio.Event) -> None:
        await ready.wait()
        await self._mark_serving()
        log.info("gRPC services SERVING")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within `grace_s`, then stop."""
        if self._ready_task is not None:
            self._ready_task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
