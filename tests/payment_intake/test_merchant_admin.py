"""MerchantAdminService behind real mutual TLS on a real PostgreSQL: only operators may call it; a
revoked merchant's notifications are refused by a running payment_intake."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from fapiao.admin.v1 import merchant_admin_service_pb2 as mpb
from fapiao.admin.v1 import merchant_admin_service_pb2_grpc as mpb_grpc
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.errors import reason_of
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.pki import IssuedCertificate, issue_operator_certificate, issue_service_certificate, write_pem_pair
from fapiao_stack.devstack import Pki
from fapiao_stack.harness import StackUnderTest
from fapiao_stack.procs import free_port
from payment_intake.admin_api import MerchantAdminServicer
from payment_intake.wechatpay import generate_apiv3_key

from tests.payment_intake.support import PLATFORM, TAX_ID, new_intake, new_transaction_id, payment_resource

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "payment_intake" / "migrations"


def _request(merchant_id: str = "1900000001", **fields: object) -> mpb.RegisterMerchantRequest:
    values: dict[str, object] = {
        "merchant_id": merchant_id,
        "legal_name": "深圳示例餐饮有限公司",
        "tax_id": TAX_ID,
        "region_code": "44",
        "default_tax_classification_code": "3070401000000000000",
        "default_item_name": "餐饮服务",
        "default_tax_rate_bp": 600,
        "platform_keys": [mpb.PlatformKey(serial=PLATFORM.serial, public_key_pem=PLATFORM.public_key_pem().encode())],
    }
    values.update(fields)
    return mpb.RegisterMerchantRequest(**values)  # type: ignore[arg-type]


def _credentials(pki: Pki, cert: IssuedCertificate | None, *, root: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root or pki.ca.cert_pem,
        private_key=cert.key_pem if cert else None,
        certificate_chain=cert.cert_pem if cert else None,
    )


@dataclass
class AdminUnderTest:
    port: int
    pool: asyncpg.Pool
    pki: Pki

    def stub(self, cert: IssuedCertificate | None) -> mpb_grpc.MerchantAdminServiceStub:
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.port}", _credentials(self.pki, cert))
        return mpb_grpc.MerchantAdminServiceStub(channel)

    async def count(self, sql: str) -> int:
        return int(await self.pool.fetchval(sql))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def admin(database_url: str, pki: Pki) -> AsyncIterator[AdminUnderTest]:
    pool = await create_pool(database_url, "payment_intake", max_size=4)
    await apply_migrations(pool, "payment_intake", MIGRATIONS)
    server = GrpcServer(["fapiao.admin.v1.MerchantAdminService"])
    server.add_servicer(
        mpb_grpc.add_MerchantAdminServiceServicer_to_server, MerchantAdminServicer(pool, secrets.token_bytes(32))
    )
    port = await server.start(
        "127.0.0.1", 0, TlsConfig(pki.server.cert_pem, pki.server.key_pem, client_ca_pem=pki.ca.cert_pem)
    )
    try:
        yield AdminUnderTest(port, pool, pki)
    finally:
        await server.stop(0.5)
        await pool.close()


async def test_an_operator_registers_twice_lists_rotates_and_revokes(admin: AdminUnderTest) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    request = _request(apiv3_key_if_new=generate_apiv3_key().decode())
    first = await operator.RegisterMerchant(request, timeout=10)
    assert await operator.RegisterMerchant(request, timeout=10) == first
    assert first.apiv3_key_stored
    assert first.merchant.active and first.merchant.tax_id == TAX_ID
    assert list(first.merchant.trusted_platform_serials) == [PLATFORM.serial]
    assert first.merchant.notify_path.endswith("/1900000001")
    # Another run with another key for a new merchant keeps the stored key, and says so.
    kept = await operator.RegisterMerchant(_request(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10)
    assert not kept.apiv3_key_stored and kept.merchant == first.merchant
    rotated = await operator.RegisterMerchant(_request(replace_apiv3_key=generate_apiv3_key().decode()), timeout=10)
    assert rotated.apiv3_key_stored
    # Each registration is one MerchantRegistered event in the outbox, with the profile change.
    assert await admin.count("SELECT count(*) FROM outbox") == 4

    await operator.RegisterMerchant(_request("1900000002", apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10)
    listing = await operator.ListMerchants(mpb.ListMerchantsRequest(), timeout=10)
    assert [(m.merchant_id, m.active) for m in listing.merchants] == [("1900000001", True), ("1900000002", True)]

    revoked = await operator.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id="1900000001"), timeout=10)
    assert not revoked.merchant.active
    again = await operator.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id="1900000001"), timeout=10)
    assert again == revoked
    listing = await operator.ListMerchants(mpb.ListMerchantsRequest(), timeout=10)
    assert [(m.merchant_id, m.active) for m in listing.merchants] == [("1900000001", False), ("1900000002", True)]
    # Registering again re-activates it.
    assert (await operator.RegisterMerchant(request, timeout=10)).merchant.active


@pytest.mark.parametrize(
    ("fields", "code", "reason"),
    [
        ({"merchant_id": "bad id"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MERCHANT_ID"),
        ({"tax_id": "91440300MA5G4LPE1X"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TAX_ID"),
        ({"region_code": "4"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REGION_CODE"),
        ({"default_tax_rate_bp": 700}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TAX_RATE"),
        ({"apiv3_key_if_new": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_APIV3_KEY"),
        ({"apiv3_key_if_new": "short"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_APIV3_KEY"),
        ({"replace_apiv3_key": "k" * 32}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_APIV3_KEY"),
        (
            {"platform_keys": [mpb.PlatformKey(serial="S1", public_key_pem=b"not a key")]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PLATFORM_KEY",
        ),
        ({"legal_name": "a\u200bb"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS"),
    ],
)
async def test_bad_registrations_get_a_precise_reason_and_change_nothing(
    admin: AdminUnderTest, fields: dict[str, object], code: grpc.StatusCode, reason: str
) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    fields = {"apiv3_key_if_new": generate_apiv3_key().decode(), **fields}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await operator.RegisterMerchant(_request(**fields), timeout=10)
    assert (refused.value.code(), reason_of(refused.value)) == (code, reason)
    assert await admin.count("SELECT count(*) FROM merchants") == 0
    assert await admin.count("SELECT count(*) FROM outbox") == 0


async def test_revoking_an_unknown_merchant_is_not_found(admin: AdminUnderTest) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    for merchant_id, code, reason in (
        ("1900000009", grpc.StatusCode.NOT_FOUND, "UNKNOWN_MERCHANT"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MERCHANT_ID"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await operator.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id=merchant_id), timeout=10)
        assert (refused.value.code(), reason_of(refused.value)) == (code, reason)


async def test_organisation_and_service_certificates_are_refused(admin: AdminUnderTest) -> None:
    for cert in (admin.pki.org_cert(TAX_ID), issue_service_certificate(admin.pki.ca, "payment_intake")):
        stub = admin.stub(cert)
        for call in (
            stub.RegisterMerchant(_request(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10),
            stub.ListMerchants(mpb.ListMerchantsRequest(), timeout=10),
            stub.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id="1900000001"), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(refused.value) == "OPERATOR_CERTIFICATE_REQUIRED"
    assert await admin.count("SELECT count(*) FROM merchants") == 0


async def test_callers_without_a_certificate_of_the_ca_never_reach_the_service(admin: AdminUnderTest) -> None:
    request = _request(apiv3_key_if_new=generate_apiv3_key().decode())
    address = f"127.0.0.1:{admin.port}"
    for channel in (
        grpc.aio.secure_channel(address, _credentials(admin.pki, None)),  # no client certificate
        grpc.aio.secure_channel(
            address, _credentials(admin.pki, issue_operator_certificate(admin.pki.other_ca, "mallory"))
        ),  # an operator certificate of another CA
        grpc.aio.insecure_channel(address),  # plaintext
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mpb_grpc.MerchantAdminServiceStub(channel).RegisterMerchant(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        await channel.close()
    assert await admin.count("SELECT count(*) FROM merchants") == 0


async def test_a_running_intake_serves_the_admin_port_and_refuses_a_revoked_merchant(
    stack: StackUnderTest, pki: Pki
) -> None:
    pki_dir = stack.tmp_path / "admin-pki"
    ca_cert, _ = write_pem_pair(pki.ca, pki_dir, "ca")
    cert, key = write_pem_pair(pki.server, pki_dir, "payment_intake")
    admin_port = free_port()
    intake = new_intake(
        stack,
        FAPIAO_MERCHANT_CACHE_TTL_S="1",
        FAPIAO_INTAKE_ADMIN_PORT=str(admin_port),
        FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE=str(cert),
        FAPIAO_INTAKE_ADMIN_TLS_KEY_FILE=str(key),
        FAPIAO_INTAKE_ADMIN_TLS_CLIENT_CA_FILE=str(ca_cert),
    )
    await intake.restart()
    operator = issue_operator_certificate(pki.ca, "alice")
    try:
        async with (
            grpc.aio.secure_channel(f"127.0.0.1:{admin_port}", _credentials(pki, operator)) as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = mpb_grpc.MerchantAdminServiceStub(channel)
            request = _request(intake.merchant_id, apiv3_key_if_new=intake.apiv3_key.decode())
            assert (await stub.RegisterMerchant(request, timeout=10)).apiv3_key_stored
            paid = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
            assert (await intake.post(session, PLATFORM.deliver(paid)))[0] == 200

            await stub.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id=intake.merchant_id), timeout=10)
            await asyncio.sleep(1.1)  # the directory's cache TTL
            refused = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
            status, answer = await intake.post(session, PLATFORM.deliver(refused))
            assert (status, answer["code"]) == (404, "UNKNOWN_MERCHANT")

            assert (await stub.RegisterMerchant(request, timeout=10)).merchant.active
            await asyncio.sleep(1.1)
            assert (await intake.post(session, PLATFORM.deliver(refused)))[0] == 200
    finally:
        intake.process.kill()
    assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 2
