"""Entry point: python -m reimbursement.

Serves ReimbursementService and OrganisationAdminService (operator certificates only) on
FAPIAO_REIMBURSEMENT_TLS_PORT with mutual TLS only; the shared
runtime's server on FAPIAO_GRPC_PORT carries health and reflection (plaintext) for probes.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
from fapiao.admin.v1 import organisation_admin_service_pb2_grpc as apb_grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as rpb_grpc
from fapiao_runtime import event_loop
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.db import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, keep_session
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.issuer_keys import IssuerKeyFollower
from fapiao_runtime.ledger_client import LedgerResultWaiter, SigningKey
from fapiao_runtime.ledger_trust import authority_keys_from_env, validator_keys_from_env
from fapiao_runtime.resilience import startup_deadline_s, wait_for_dependency
from fapiao_runtime.service import ServiceContext, Task, run_service

from reimbursement.admin_api import OrganisationAdminServicer
from reimbursement.grpc_api import ReimbursementServicer
from reimbursement.handlers import ReimbursementHandlers
from reimbursement.invoice_facts import FactsCache
from reimbursement.ledger_adapter import ValidatorLedger, register_submitter_key
from reimbursement.pending_resolver import run_pending_resolver
from reimbursement.settings import ReimbursementSettings
from reimbursement.store import store_registration
from reimbursement.verification import InvoiceVerifier

SERVICE_NAME = "fapiao.reimbursement.v1.ReimbursementService"
ADMIN_SERVICE_NAME = "fapiao.admin.v1.OrganisationAdminService"
log = logging.getLogger("reimbursement")


async def _request_pool(ctx: ServiceContext) -> asyncpg.Pool:
    schema = ctx.config.db_schema
    pool = await asyncpg.create_pool(
        ctx.config.database_url,
        min_size=2,
        max_size=ctx.config.db_pool_max_size,
        server_settings={"search_path": f"{schema},public", "application_name": f"{schema}-requests"},
        command_timeout=COMMAND_TIMEOUT_S,
        timeout=CONNECT_TIMEOUT_S,
        reset=keep_session,
    )
    assert pool is not None
    return pool


def _signing_key(settings: ReimbursementSettings) -> SigningKey:
    if settings.signing_key_file is not None:
        key_id = settings.signing_key_id or "reimbursement-1"
        return SigningKey.from_pem(key_id, settings.signing_key_file.read_bytes())
    # No configured key: a fresh one per process, registered below before anything is signed with it.
    return SigningKey.generate(settings.signing_key_id or f"reimbursement-{uuid.uuid4().hex[:12]}")


async def _wire(ctx: ServiceContext, _ops_server: GrpcServer) -> list[Awaitable[None] | Task]:
    settings = ReimbursementSettings.from_env()
    validator_keys = validator_keys_from_env()
    if not validator_keys:
        raise ValueError("FAPIAO_LEDGER_VALIDATOR_KEYS is required to verify ledger receipts")
    authority = SigningKey.from_pem(settings.authority_key_id, settings.authority_key_file.read_bytes())
    key = _signing_key(settings)
    # The runtime waited for the database and the broker; they may have gone again since.
    deadline = time.monotonic() + startup_deadline_s()
    await wait_for_dependency(
        "submitter key registration", lambda: register_submitter_key(ctx.pool, authority, key), deadline
    )
    log.info("submitter key registered", extra={"key_id": key.key_id})

    waiter = LedgerResultWaiter(
        ctx.config.kafka_bootstrap, ctx.config.topic_prefix, client_id=f"reimbursement-{uuid.uuid4().hex[:8]}"
    )
    await wait_for_dependency("ledger results reader", waiter.start, deadline)
    ledger = ValidatorLedger(
        settings.ledger_endpoints,
        key,
        waiter,
        validator_keys,
        settings.quorum,
        call_timeout_s=settings.ledger_call_timeout_ms / 1000,
    )
    requests_pool = await wait_for_dependency("request pool", lambda: _request_pool(ctx), deadline)
    facts = FactsCache()  # VerifyInvoice fills it; LockInvoice's pre-check reads it
    handlers = ReimbursementHandlers(requests_pool, ledger, settings.handlers, facts_cache=facts)
    # Issuer keys come from the ledger log, as the validators apply them (fapiao_runtime.issuer_keys).
    pool = ctx.pool
    recorder = IssuerKeyFollower(
        ctx.config.kafka_bootstrap,
        ctx.config.topic("ledger.tx.v1"),
        f"{ctx.config.topic_prefix}{ctx.config.service_name}-issuer-keys",
        lambda registration: store_registration(pool, registration),
        authority_keys_from_env(),
    )
    verifier = InvoiceVerifier(
        requests_pool,
        ledger,
        validator_keys,
        settings.quorum,
        settings.verification,
        keys_caught_up=recorder.caught_up,
        facts_cache=facts,
    )

    api = GrpcServer([SERVICE_NAME, ADMIN_SERVICE_NAME])
    api.add_servicer(
        rpb_grpc.add_ReimbursementServiceServicer_to_server, ReimbursementServicer(requests_pool, handlers, verifier)
    )
    # Operators (operator certificates only) register and revoke organisations on the same port.
    api.add_servicer(apb_grpc.add_OrganisationAdminServiceServicer_to_server, OrganisationAdminServicer(ctx.pool))
    tls = TlsConfig(
        cert_chain_pem=settings.tls_cert_file.read_bytes(),
        private_key_pem=settings.tls_key_file.read_bytes(),
        client_ca_pem=settings.client_ca_file.read_bytes(),
    )
    port = await api.start(ctx.config.grpc_host, settings.tls_port, tls)
    log.info("reimbursement API serving with mutual TLS", extra={"tls_port": port})

    async def serve_until_stopped() -> None:
        try:
            await ctx.stop.wait()
        finally:
            await api.stop(5.0)
            await waiter.stop()
            with contextlib.suppress(Exception):
                await ledger.close()
            await requests_pool.close()

    return [
        serve_until_stopped(),
        Task("issuer key recorder", lambda: recorder.run(ctx.stop)),
        run_pending_resolver(ctx.pool, ledger, ctx.stop),  # retries each round by itself
    ]


def main() -> None:
    config = RuntimeConfig.from_env("reimbursement", 50053)
    event_loop.run(
        run_service(
            config,
            service_names=[],
            migrations=Path(__file__).parent / "migrations",
            wire=_wire,
        )
    )


if __name__ == "__main__":
    main()
