"""Channels to Fapiao's internal gRPC services: plaintext by default, TLS when a CA is configured.

FAPIAO_GRPC_CA_FILE: PEM trust roots of the internal servers (those run with FAPIAO_GRPC_TLS_*); set,
every internal channel uses TLS and checks the server's certificate against them.
FAPIAO_GRPC_CLIENT_CERT_FILE / FAPIAO_GRPC_CLIENT_KEY_FILE: this process's certificate, for servers
that require mutual TLS (FAPIAO_GRPC_TLS_CLIENT_CA_FILE).
Every call on these channels sends the W3C trace context of the work under way (metadata `traceparent`,
`tracing.current()`), so the trace of a request continues in the services it calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from fapiao_runtime import tracing


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    traceparent = tracing.current()
    if not traceparent:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if tracing.TRACEPARENT not in metadata:
        metadata.add(tracing.TRACEPARENT, traceparent)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _TraceUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_trace(details), request)


class _TraceStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_trace(details), request)


TRACE_INTERCEPTORS: list[grpc.aio.ClientInterceptor] = [_TraceUnary(), _TraceStream()]


def _read(name: str) -> bytes | None:
    path = os.environ.get(name, "")
    return Path(path).read_bytes() if path else None


def internal_credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials from the environment; None when FAPIAO_GRPC_CA_FILE is unset (plaintext)."""
    roots = _read("FAPIAO_GRPC_CA_FILE")
    if roots is None:
        return None
    cert, key = _read("FAPIAO_GRPC_CLIENT_CERT_FILE"), _read("FAPIAO_GRPC_CLIENT_KEY_FILE")
    if (cert is None) != (key is None):
        raise ValueError("FAPIAO_GRPC_CLIENT_CERT_FILE and FAPIAO_GRPC_CLIENT_KEY_FILE go together")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)


def internal_channel(endpoint: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to `endpoint` with `credentials`, else those of the environment, else plaintext."""
    credentials = credentials or internal_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(endpoint, interceptors=TRACE_INTERCEPTORS)
    return grpc.aio.secure_channel(endpoint, credentials, interceptors=TRACE_INTERCEPTORS)
