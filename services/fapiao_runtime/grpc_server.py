"""gRPC server bootstrap on grpc.aio: health service, reflection, request ids, error mapping, TLS."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.logs import request_id_var
from fapiao_runtime.metrics import GRPC_LATENCY, GRPC_REQUESTS, REJECTIONS

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS material (PEM). With client_ca_pem set, clients must present a certificate it signed."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None


_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A request id unique across processes (random per process, then a counter): no syscall per call."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return str(value)[:64]
    return new_request_id()


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id (from x-request-id or new), maps FapiaoError to its status, hides internals.

    Each method's handler is wrapped once and reused: the per-call work is the call itself.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner_unary = handler.unary_unary
        latency = GRPC_LATENCY.labels(method=method)
        ok = GRPC_REQUESTS.labels(method=method, code="OK")

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = request_id_var.set(_request_id(context))
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner_unary(request, context)
            except FapiaoError as exc:
                code = exc.status_code.name
                REJECTIONS.labels(method=method, reason=exc.reason).inc()
                await context.abort(exc.status_code, exc.details, trailing_metadata=(("fapiao-reason", exc.reason),))
            except grpc.aio.AbortError:
                code = (context.code() or grpc.StatusCode.UNKNOWN).name
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("unhandled error", extra={"method": method})
                await context.abort(grpc.StatusCode.INTERNAL, "INTERNAL: internal error")
            finally:
                (ok if code == "OK" else GRPC_REQUESTS.labels(method=method, code=code)).inc()
                latency.observe(time.perf_counter() - started)
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = request_id_var.set(_request_id(context))
            try:
                async for item in inner_stream(request, context):
                    yield item
            except FapiaoError as exc:
                await context.abort(exc.status_code, exc.details, trailing_metadata=(("fapiao-reason", exc.reason),))
            finally:
                request_id_var.reset(token)

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class GrpcServer:
    """A grpc.aio server with the standard health service and reflection.

    Usage: server = GrpcServer([...service full names...]); register servicers on server.server;
    port = await server.start(host, port); ...; await server.stop(grace_s).
    """

    def __init__(
        self,
        service_names: Sequence[str],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_concurrent_rpcs: int = 1000,
    ) -> None:
        self.server = grpc.aio.server(
            interceptors=[RequestContextInterceptor(), *interceptors],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection(
            [
                *self._service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = 0

    async def start(self, host: str, port: int, tls: TlsConfig | None = None) -> int:
        """Bind and start; returns the bound port (pass 0 to pick a free one). Marks every service SERVING."""
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
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC server to {address}")
        await self.server.start()
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server started", extra={"address": f"{host}:{self.port}", "tls": tls is not None})
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within `grace_s`, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
