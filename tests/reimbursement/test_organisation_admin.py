"""OrganisationAdminService behind real mutual TLS on a real PostgreSQL: only operators may call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from fapiao.admin.v1 import organisation_admin_service_pb2 as apb
from fapiao.admin.v1 import organisation_admin_service_pb2_grpc as apb_grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.errors import reason_of
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.pki import IssuedCertificate, issue_operator_certificate, issue_service_certificate
from reimbursement.admin_api import OrganisationAdminServicer
from reimbursement.organisations import find_organisation

from tests.reimbursement.conftest import ApiUnderTest
from tests.reimbursement.support import Pki, new_tax_id

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "reimbursement" / "migrations"


@dataclass
class AdminUnderTest:
    port: int
    pool: asyncpg.Pool
    pki: Pki

    def channel(self, cert: IssuedCertificate | None, *, root: bytes | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root or self.pki.ca.cert_pem,
            private_key=cert.key_pem if cert else None,
            certificate_chain=cert.cert_pem if cert else None,
        )
        return grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds)

    def stub(self, cert: IssuedCertificate | None) -> apb_grpc.OrganisationAdminServiceStub:
        return apb_grpc.OrganisationAdminServiceStub(self.channel(cert))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def admin(database_url: str, pki: Pki) -> AsyncIterator[AdminUnderTest]:
    pool = await create_pool(database_url, "reimbursement", max_size=4)
    await apply_migrations(pool, "reimbursement", MIGRATIONS)
    server = GrpcServer(["fapiao.admin.v1.OrganisationAdminService"])
    server.add_servicer(apb_grpc.add_OrganisationAdminServiceServicer_to_server, OrganisationAdminServicer(pool))
    port = await server.start(
        "127.0.0.1", 0, TlsConfig(pki.server.cert_pem, pki.server.key_pem, client_ca_pem=pki.ca.cert_pem)
    )
    try:
        yield AdminUnderTest(port, pool, pki)
    finally:
        await server.stop(0.5)
        await pool.close()


async def test_an_operator_registers_twice_lists_and_revokes(admin: AdminUnderTest) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    tax_id = new_tax_id()
    request = apb.RegisterOrganisationRequest(tax_id=tax_id.lower(), name="  深圳测试科技有限公司 ")
    first = await operator.RegisterOrganisation(request, timeout=10)
    again = await operator.RegisterOrganisation(request, timeout=10)
    assert first == again
    assert first.organisation == apb.Organisation(tax_id=tax_id, name="深圳测试科技有限公司", active=True)
    other = new_tax_id()
    await operator.RegisterOrganisation(apb.RegisterOrganisationRequest(tax_id=other, name="Other"), timeout=10)

    listing = await operator.ListOrganisations(apb.ListOrganisationsRequest(), timeout=10)
    assert [o.tax_id for o in listing.organisations] == sorted([tax_id, other])
    assert all(o.active for o in listing.organisations)

    revoked = await operator.RevokeOrganisation(apb.RevokeOrganisationRequest(tax_id=tax_id), timeout=10)
    assert revoked.organisation == apb.Organisation(tax_id=tax_id, name="深圳测试科技有限公司", active=False)
    assert await operator.RevokeOrganisation(apb.RevokeOrganisationRequest(tax_id=tax_id), timeout=10) == revoked
    stored = await find_organisation(admin.pool, tax_id)
    assert stored is not None and not stored.active
    listing = await operator.ListOrganisations(apb.ListOrganisationsRequest(), timeout=10)
    assert {o.tax_id: o.active for o in listing.organisations} == {tax_id: False, other: True}

    # Registering again re-activates the organisation.
    back = await operator.RegisterOrganisation(request, timeout=10)
    assert back.organisation.active


@pytest.mark.parametrize(
    ("method", "tax_id", "name", "code", "reason"),
    [
        ("RegisterOrganisation", "91440300MA5G4LPE1X", "X", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TAX_ID"),
        ("RegisterOrganisation", None, " ", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
        ("RegisterOrganisation", None, "x" * 201, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
        ("RegisterOrganisation", None, "a\u200bb", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS"),
        ("RevokeOrganisation", "91440300MA5G4LPE1X", "", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TAX_ID"),
        ("RevokeOrganisation", None, "", grpc.StatusCode.NOT_FOUND, "UNKNOWN_ORGANISATION"),
    ],
)
async def test_bad_requests_get_a_precise_reason_and_change_nothing(
    admin: AdminUnderTest, method: str, tax_id: str | None, name: str, code: grpc.StatusCode, reason: str
) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    tax_id = tax_id or new_tax_id()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        if method == "RegisterOrganisation":
            await operator.RegisterOrganisation(apb.RegisterOrganisationRequest(tax_id=tax_id, name=name), timeout=10)
        else:
            await operator.RevokeOrganisation(apb.RevokeOrganisationRequest(tax_id=tax_id), timeout=10)
    assert refused.value.code() == code
    assert reason_of(refused.value) == reason
    assert await admin.pool.fetchval("SELECT count(*) FROM organisations") == 0


async def test_organisation_and_service_certificates_are_refused(admin: AdminUnderTest) -> None:
    tax_id = new_tax_id()
    register = apb.RegisterOrganisationRequest(tax_id=tax_id, name="Company")
    for cert, reason in (
        (admin.pki.org_cert(tax_id), "OPERATOR_CERTIFICATE_REQUIRED"),
        (issue_service_certificate(admin.pki.ca, "gateway"), "OPERATOR_CERTIFICATE_REQUIRED"),
    ):
        stub = admin.stub(cert)
        for call in (
            stub.RegisterOrganisation(register, timeout=10),
            stub.ListOrganisations(apb.ListOrganisationsRequest(), timeout=10),
            stub.RevokeOrganisation(apb.RevokeOrganisationRequest(tax_id=tax_id), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(refused.value) == reason
    assert await admin.pool.fetchval("SELECT count(*) FROM organisations") == 0


async def test_callers_without_a_certificate_of_the_ca_never_reach_the_service(admin: AdminUnderTest) -> None:
    register = apb.RegisterOrganisationRequest(tax_id=new_tax_id(), name="Company")
    other_operator = issue_operator_certificate(admin.pki.other_ca, "mallory")
    for channel in (
        admin.channel(None),  # TLS without a client certificate
        admin.channel(other_operator),  # an operator certificate of another CA
        grpc.aio.insecure_channel(f"127.0.0.1:{admin.port}"),  # plaintext
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await apb_grpc.OrganisationAdminServiceStub(channel).RegisterOrganisation(register, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        await channel.close()
    assert await admin.pool.fetchval("SELECT count(*) FROM organisations") == 0


async def test_an_operator_certificate_is_no_organisation(api: ApiUnderTest) -> None:
    operator = issue_operator_certificate(api.pki.ca, "alice")
    credentials = grpc.ssl_channel_credentials(api.pki.ca.cert_pem, operator.key_pem, operator.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{api.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.stub(channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=api.issue(None), idempotency_key="k1"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(refused.value) == "NOT_AN_ORGANISATION_CERTIFICATE"
    assert not api.ledger.submitted
