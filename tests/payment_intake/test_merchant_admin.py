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
from fapiao_runtime.pki import IssuedCertificate, issue_operator_certificate, issue_service_certificate
from fapiao_stack.devstack import Pki
from fapiao_stack.harness import StackUnderTest
from payment_intake.admin_api import MerchantAdminServicer
from payment_intake.wechatpay import PlatformSigner, generate_apiv3_key

from tests.payment_intake.support import (
    OTHER_PLATFORM,
    PLATFORM,
    TAX_ID,
    intake_with_admin,
    new_transaction_id,
    payment_resource,
    registration,
)

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "payment_intake" / "migrations"


def _key(platform: PlatformSigner) -> mpb.PlatformKey:
    return mpb.PlatformKey(serial=platform.serial, public_key_pem=platform.public_key_pem().encode())


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
    request = registration(apiv3_key_if_new=generate_apiv3_key().decode())
    first = await operator.RegisterMerchant(request, timeout=10)
    assert await operator.RegisterMerchant(request, timeout=10) == first
    assert first.apiv3_key_stored
    assert first.merchant.active and first.merchant.tax_id == TAX_ID
    assert list(first.merchant.trusted_platform_serials) == [PLATFORM.serial]
    assert first.merchant.notify_path.endswith("/1900000001")
    # Another run with another key for a new merchant keeps the stored key, and says so.
    kept = await operator.RegisterMerchant(registration(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10)
    assert not kept.apiv3_key_stored and kept.merchant == first.merchant
    rotated = await operator.RegisterMerchant(registration(replace_apiv3_key=generate_apiv3_key().decode()), timeout=10)
    assert rotated.apiv3_key_stored
    # Each registration is one MerchantRegistered event in the outbox, with the profile change.
    assert await admin.count("SELECT count(*) FROM outbox") == 4

    await operator.RegisterMerchant(
        registration("1900000002", apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10
    )
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
        await operator.RegisterMerchant(registration(**fields), timeout=10)
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
            stub.RegisterMerchant(registration(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10),
            stub.ListMerchants(mpb.ListMerchantsRequest(), timeout=10),
            stub.RevokeMerchant(mpb.RevokeMerchantRequest(merchant_id="1900000001"), timeout=10),
            stub.AddPlatformKey(mpb.AddPlatformKeyRequest(merchant_id="1900000001", key=_key(PLATFORM)), timeout=10),
            stub.RemovePlatformKey(
                mpb.RemovePlatformKeyRequest(merchant_id="1900000001", serial=PLATFORM.serial), timeout=10
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(refused.value) == "OPERATOR_CERTIFICATE_REQUIRED"
    assert await admin.count("SELECT count(*) FROM merchants") == 0


async def test_callers_without_a_certificate_of_the_ca_never_reach_the_service(admin: AdminUnderTest) -> None:
    request = registration(apiv3_key_if_new=generate_apiv3_key().decode())
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
    async with intake_with_admin(stack, pki, FAPIAO_MERCHANT_CACHE_TTL_S="1") as (intake, stub):
        async with aiohttp.ClientSession() as session:
            request = registration(intake.merchant_id, apiv3_key_if_new=intake.apiv3_key.decode())
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
    assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 2


async def test_an_operator_rotates_a_merchants_platform_key(admin: AdminUnderTest) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    await operator.RegisterMerchant(registration(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10)
    add = mpb.AddPlatformKeyRequest(merchant_id="1900000001", key=_key(OTHER_PLATFORM))
    added = await operator.AddPlatformKey(add, timeout=10)
    assert list(added.merchant.trusted_platform_serials) == [PLATFORM.serial, OTHER_PLATFORM.serial]
    assert await operator.AddPlatformKey(add, timeout=10) == added  # the same request, the same answer

    remove = mpb.RemovePlatformKeyRequest(merchant_id="1900000001", serial=PLATFORM.serial)
    removed = await operator.RemovePlatformKey(remove, timeout=10)
    assert removed.removed and list(removed.merchant.trusted_platform_serials) == [OTHER_PLATFORM.serial]
    again = await operator.RemovePlatformKey(remove, timeout=10)
    assert not again.removed and again.merchant == removed.merchant

    # The last trusted serial stays: without one no notification of the merchant could verify.
    last = mpb.RemovePlatformKeyRequest(merchant_id="1900000001", serial=OTHER_PLATFORM.serial)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await operator.RemovePlatformKey(last, timeout=10)
    assert (refused.value.code(), reason_of(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAST_PLATFORM_KEY",
    )
    assert await admin.count("SELECT count(*) FROM platform_keys") == 1


@pytest.mark.parametrize(
    ("call", "code", "reason"),
    [
        (
            ("AddPlatformKey", mpb.AddPlatformKeyRequest(merchant_id="1900000009", key=_key(OTHER_PLATFORM))),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_MERCHANT",
        ),
        (
            ("AddPlatformKey", mpb.AddPlatformKeyRequest(merchant_id="bad id", key=_key(OTHER_PLATFORM))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_MERCHANT_ID",
        ),
        (
            (
                "AddPlatformKey",
                mpb.AddPlatformKeyRequest(
                    merchant_id="1900000001", key=mpb.PlatformKey(serial="S-1!", public_key_pem=b"x")
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_SERIAL",
        ),
        (
            (
                "AddPlatformKey",
                mpb.AddPlatformKeyRequest(
                    merchant_id="1900000001", key=mpb.PlatformKey(serial="S2", public_key_pem=b"not a key")
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PLATFORM_KEY",
        ),
        (
            ("RemovePlatformKey", mpb.RemovePlatformKeyRequest(merchant_id="1900000009", serial="S2")),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_MERCHANT",
        ),
        (
            ("RemovePlatformKey", mpb.RemovePlatformKeyRequest(merchant_id="1900000001", serial="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_SERIAL",
        ),
    ],
)
async def test_bad_key_rotations_get_a_precise_reason_and_change_nothing(
    admin: AdminUnderTest, call: tuple[str, object], code: grpc.StatusCode, reason: str
) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    await operator.RegisterMerchant(registration(apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10)
    method, request = call
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(operator, method)(request, timeout=10)
    assert (refused.value.code(), reason_of(refused.value)) == (code, reason)
    assert await admin.pool.fetchval("SELECT array_agg(serial) FROM platform_keys") == [PLATFORM.serial]


async def test_a_key_added_through_the_api_is_accepted_at_once_and_a_removed_one_refused(
    stack: StackUnderTest, pki: Pki
) -> None:
    async with intake_with_admin(stack, pki, FAPIAO_MERCHANT_CACHE_TTL_S="1") as (intake, stub):
        async with aiohttp.ClientSession() as session:
            request = registration(intake.merchant_id, apiv3_key_if_new=intake.apiv3_key.decode())
            await stub.RegisterMerchant(request, timeout=10)
            body = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
            assert (await intake.post(session, OTHER_PLATFORM.deliver(body)))[1]["code"] == "UNKNOWN_SERIAL"

            add = mpb.AddPlatformKeyRequest(merchant_id=intake.merchant_id, key=_key(OTHER_PLATFORM))
            await stub.AddPlatformKey(add, timeout=10)
            await asyncio.sleep(1.0)  # an unknown serial refreshes the merchant at most once a second
            assert (await intake.post(session, OTHER_PLATFORM.deliver(body)))[0] == 200

            remove = mpb.RemovePlatformKeyRequest(merchant_id=intake.merchant_id, serial=PLATFORM.serial)
            assert (await stub.RemovePlatformKey(remove, timeout=10)).removed
            await asyncio.sleep(1.1)  # the directory's cache TTL
            retired = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
            assert (await intake.post(session, PLATFORM.deliver(retired)))[1]["code"] == "UNKNOWN_SERIAL"
    assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1


async def test_two_concurrent_removals_never_leave_a_merchant_without_a_platform_key(admin: AdminUnderTest) -> None:
    operator = admin.stub(issue_operator_certificate(admin.pki.ca, "alice"))
    for round_ in range(5):
        merchant_id = f"19000001{round_:02d}"
        await operator.RegisterMerchant(
            registration(merchant_id, apiv3_key_if_new=generate_apiv3_key().decode()), timeout=10
        )
        await operator.AddPlatformKey(
            mpb.AddPlatformKeyRequest(merchant_id=merchant_id, key=_key(OTHER_PLATFORM)), timeout=10
        )
        # Each of two operators retires a different serial at the same moment: one of them must be refused.
        answers = await asyncio.gather(
            *(
                operator.RemovePlatformKey(mpb.RemovePlatformKeyRequest(merchant_id=merchant_id, serial=s), timeout=10)
                for s in (PLATFORM.serial, OTHER_PLATFORM.serial)
            ),
            return_exceptions=True,
        )
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(refused) == 1 and reason_of(refused[0]) == "LAST_PLATFORM_KEY", answers
        left = await admin.pool.fetchval("SELECT count(*) FROM platform_keys WHERE merchant_id = $1", merchant_id)
        assert left == 1
