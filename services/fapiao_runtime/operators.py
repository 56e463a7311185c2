"""Who may call the admin services: an operator certificate the mutual-TLS handshake verified.

The handshake rejects a missing certificate or one from another CA before any RPC exists (the client
sees UNAVAILABLE). A verified certificate that is not an operator's (an organisation's, a service's)
is refused with PERMISSION_DENIED OPERATOR_CERTIFICATE_REQUIRED; a call that reached the server
without TLS at all is refused with UNAUTHENTICATED CLIENT_CERTIFICATE_REQUIRED.
"""

from __future__ import annotations

import functools

import grpc

from fapiao_runtime.errors import PermissionDenied, Unauthenticated
from fapiao_runtime.pki import operator_name


@functools.lru_cache(maxsize=256)
def _operator_of(cert_pem: bytes) -> str | None:
    # Parsing X.509 costs more than the call; a connection presents the same certificate every time.
    return operator_name(cert_pem)


def require_operator(context: grpc.aio.ServicerContext) -> str:
    """The name of the operator calling; UNAUTHENTICATED or PERMISSION_DENIED for anyone else."""
    certs = (context.auth_context() or {}).get("x509_pem_cert") or []
    if not certs:
        raise Unauthenticated("CLIENT_CERTIFICATE_REQUIRED", "an operator client certificate is required (mutual TLS)")
    name = _operator_of(bytes(certs[0]))
    if name is None:
        raise PermissionDenied("OPERATOR_CERTIFICATE_REQUIRED", "only operator certificates may call the admin API")
    return name
