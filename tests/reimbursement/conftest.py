"""Fixtures: the reimbursement API in-process behind real mutual TLS, on a real PostgreSQL, with a fake ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as rpb_grpc
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from reimbursement.grpc_api import ReimbursementServicer
from reimbursement.handlers import ReimbursementHandlers
from reimbursement.invoice_facts import FactsCache
from reimbursement.organisations import add_organisation
from reimbursement.settings import HandlerSettings, VerificationSettings
from reimbursement.store import store_registration
from reimbursement.verification import InvoiceVerifier

from tests.reimbursement.fake_ledger import FakeLedger
from tests.reimbursement.support import Issuer, Pki

MIGRATIONS = Path(__file__).parents[2] / "services" / "reimbursement" / "migrations"


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


@dataclass
class ApiUnderTest:
    port: int
    pool: asyncpg.Pool
    ledger: FakeLedger
    pki: Pki
    issuer: Issuer

    async def add_org(self, tax_id: str) -> None:
        async with self.pool.acquire() as conn:
            await add_organisation(conn, tax_id, f"Company {tax_id[-6:]}")

    def channel(self, tax_id: str | None, *, other_ca: bool = False) -> grpc.aio.Channel:
        return self.pki.channel(self.port, tax_id, other_ca=other_ca)

    def stub(self, channel: grpc.aio.Channel) -> rpb_grpc.ReimbursementServiceStub:
        return rpb_grpc.ReimbursementServiceStub(channel)

    def issue(self, buyer_tax_id: str | None, **kwargs: object) -> str:
        signed = self.issuer.invoice(buyer_tax_id, **kwargs)  # type: ignore[arg-type]
        return self.ledger.issue(signed, self.issuer.key).invoice_number


@pytest.fixture
async def api(database_url: str, pki: Pki) -> AsyncIterator[ApiUnderTest]:
    pool = await create_pool(database_url, "reimbursement", max_size=10)
    await apply_migrations(pool, "reimbursement", MIGRATIONS)
    ledger = FakeLedger()
    issuer = Issuer()
    await store_registration(pool, issuer.registration("reg-1"))
    facts = FactsCache()
    handlers = ReimbursementHandlers(pool, ledger, HandlerSettings(max_wait_s=2.0), facts_cache=facts)
    verifier = InvoiceVerifier(
        pool,
        ledger,
        ledger.public_keys,  # type: ignore[arg-type]
        None,
        VerificationSettings(5, 50.0),
        facts_cache=facts,
    )
    server = GrpcServer(["fapiao.reimbursement.v1.ReimbursementService"])
    server.add_servicer(
        rpb_grpc.add_ReimbursementServiceServicer_to_server, ReimbursementServicer(pool, handlers, verifier)
    )
    port = await server.start(
        "127.0.0.1", 0, TlsConfig(pki.server.cert_pem, pki.server.key_pem, client_ca_pem=pki.ca.cert_pem)
    )
    try:
        yield ApiUnderTest(port, pool, ledger, pki, issuer)
    finally:
        await server.stop(0.5)
        await pool.close()
