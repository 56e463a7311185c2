"""Who is calling: the organisation named by the client certificate the mutual-TLS handshake verified.

The handshake itself rejects a missing certificate or one from another CA (the client sees
UNAVAILABLE: gRPC reports a failed handshake as a transport failure, before any RPC exists).
Here a verified certificate must still name a registered, active organisation: else UNAUTHENTICATED.
"""

from __future__ import annotations

import functools

import asyncpg
import grpc
from fapiao_runtime.errors import Unauthenticated
from fapiao_runtime.pki import organisation_tax_id

from reimbursement.organisations import Organisation, find_organisation


@functools.lru_cache(maxsize=4096)
def _tax_id_of(cert_pem: bytes) -> str | None:
    # Parsing X.509 costs more than the lookup; certificates repeat across calls on a connection.
    return organisation_tax_id(cert_pem)


def peer_tax_id(context: grpc.aio.ServicerContext) -> str:
    """The tax id in the verified peer certificate; UNAUTHENTICATED when there is none."""
    auth = context.auth_context() or {}
    certs = auth.get("x509_pem_cert") or []
    if not certs:
        raise Unauthenticated("CLIENT_CERTIFICATE_REQUIRED", "a client certificate is required (mutual TLS)")
    tax_id = _tax_id_of(bytes(certs[0]))
    if tax_id is None:
        raise Unauthenticated("NOT_AN_ORGANISATION_CERTIFICATE", "the client certificate names no organisation")
    return tax_id


async def authenticate(context: grpc.aio.ServicerContext, pool: asyncpg.Pool) -> Organisation:
    """The calling organisation; UNAUTHENTICATED if unknown or revoked (checked on every call)."""
    return require_active(await find_organisation(pool, peer_tax_id(context)))


def require_active(organisation: Organisation | None) -> Organisation:
    """`organisation` if registered and active; else UNAUTHENTICATED UNKNOWN_ORGANISATION / ORGANISATION_REVOKED."""
    if organisation is None:
        raise Unauthenticated("UNKNOWN_ORGANISATION", "the organisation is not registered")
    if not organisation.active:
        raise Unauthenticated("ORGANISATION_REVOKED", "the organisation has been revoked")
    return organisation
