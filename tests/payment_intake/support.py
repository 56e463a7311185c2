"""Shared helpers for payment_intake tests: a running service process, a registered merchant, a platform."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import grpc
from fapiao.admin.v1 import merchant_admin_service_pb2 as admin_pb2
from fapiao.admin.v1 import merchant_admin_service_pb2_grpc as admin_grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao_runtime.pki import issue_operator_certificate, write_pem_pair
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.devstack import Pki
from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.procs import free_port
from google.protobuf.timestamp_pb2 import Timestamp
from payment_intake import merchants
from payment_intake.wechatpay import Delivery, PlatformSigner, generate_apiv3_key, transaction_resource

SCHEMA = "payment_intake"
# Shenzhen (440300), registered by the market regulator (9) as an enterprise (1); check char computed.
TAX_ID = "9144030071526726X" + uscc_check_char("9144030071526726X")
# Test platform keys are generated once per test run (RSA generation is slow); never committed.
PLATFORM = PlatformSigner.generate("5157F09EFDC096DE15EBE81A47057A7232F1B8E1")
OTHER_PLATFORM = PlatformSigner.generate("7132D72A03E93CDDF8C03BBD1F37EEDF204C8CC2")


@dataclass
class Intake:
    """A running payment_intake process with one registered merchant."""

    stack: StackUnderTest
    process: ServiceProcess
    webhook_port: int
    secrets_key: bytes
    payer_hash_key: bytes
    merchant_id: str
    apiv3_key: bytes
    signer: PlatformSigner = field(default_factory=lambda: PLATFORM)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def notify_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/v1/notify/wechatpay/{self.merchant_id}"

    def channel(self, *, own_connection: bool = False) -> grpc.aio.Channel:
        """A channel to the service; `own_connection`: not sharing a TCP connection with this process's
        other channels to the same address (gRPC shares one by default)."""
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.process.port}", options=options)

    def env(self) -> dict[str, str]:
        return {
            "FAPIAO_WEBHOOK_PORT": str(self.webhook_port),
            "FAPIAO_SECRETS_KEY": self.secrets_key.hex(),
            "FAPIAO_PAYER_HASH_KEY": self.payer_hash_key.hex(),
            **self.extra_env,
        }

    async def restart(self) -> None:
        workers = int(self.extra_env.get("FAPIAO_INTAKE_PROCESSES", "1"))
        self.process = await self.stack.start_service("payment_intake", processes=workers, **self.env())

    def notification(self, resource: dict[str, Any], **kwargs: Any) -> bytes:
        return self.signer.notification_body(self.apiv3_key, resource, **kwargs)

    async def post(
        self, session: aiohttp.ClientSession, delivery: Delivery, url: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with session.post(url or self.notify_url, data=delivery.body, headers=delivery.headers) as response:
            return response.status, await response.json()

    async def count(self, sql: str, *args: Any) -> int:
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()


def payment_resource(merchant_id: str, transaction_id: str, total_fen: int = 12_345, **kw: Any) -> dict[str, Any]:
    kw.setdefault("out_trade_no", f"order-{transaction_id}")
    kw.setdefault("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    kw.setdefault("success_time", datetime(2026, 11, 20, 10, 34, 56, tzinfo=UTC))
    return transaction_resource(mchid=merchant_id, transaction_id=transaction_id, total_fen=total_fen, **kw)


def payment_request(
    merchant_id: str, transaction_id: str, total_fen: int = 12_345, **kw: Any
) -> service_pb2.RecordPaymentRequest:
    """The gRPC twin of payment_resource: same facts, so both describe one payment."""
    success = Timestamp()
    success.FromDatetime(kw.pop("success_time", datetime(2026, 11, 20, 10, 34, 56, tzinfo=UTC)))
    return service_pb2.RecordPaymentRequest(
        merchant_id=merchant_id,
        transaction_id=transaction_id,
        out_trade_no=kw.pop("out_trade_no", f"order-{transaction_id}"),
        amount_fen=total_fen,
        payer_total_fen=kw.pop("payer_total_fen", total_fen),
        currency="CNY",
        success_time=success,
        payer_openid=kw.pop("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
        appid="wxd678efh567hg6787",
        trade_type="JSAPI",
        **kw,
    )


def registration(merchant_id: str = "1900000001", **fields: object) -> admin_pb2.RegisterMerchantRequest:
    """A MerchantAdminService registration of a restaurant trusting PLATFORM; `fields` override."""
    values: dict[str, object] = {
        "merchant_id": merchant_id,
        "legal_name": "深圳示例餐饮有限公司",
        "tax_id": TAX_ID,
        "region_code": "44",
        "default_tax_classification_code": "3070401000000000000",
        "default_item_name": "餐饮服务",
        "default_tax_rate_bp": 600,
        "platform_keys": [
            admin_pb2.PlatformKey(serial=PLATFORM.serial, public_key_pem=PLATFORM.public_key_pem().encode())
        ],
    }
    values.update(fields)
    return admin_pb2.RegisterMerchantRequest(**values)  # type: ignore[arg-type]


def stub(channel: grpc.aio.Channel) -> service_grpc.PaymentIntakeServiceStub:
    return service_grpc.PaymentIntakeServiceStub(channel)


async def register(stack: StackUnderTest, secrets_key: bytes, merchant_id: str, apiv3_key: bytes) -> None:
    await merchants.register_merchant_at(
        stack.database_url,
        secrets_key,
        merchants.MerchantProfile(
            merchant_id, "深圳市测试餐饮有限公司", TAX_ID, "44", "3070401000000000000", "餐饮服务", 600
        ),
        apiv3_key=apiv3_key,
        platform_keys={PLATFORM.serial: PLATFORM.public_key_pem()},
        schema=SCHEMA,
    )


def new_intake(stack: StackUnderTest, **extra_env: str) -> Intake:
    """A payment_intake for merchant 1230000109 with keys of its own, not started yet."""
    return Intake(
        stack=stack,
        process=None,  # type: ignore[arg-type]
        webhook_port=free_port(),
        secrets_key=secrets.token_bytes(32),
        payer_hash_key=secrets.token_bytes(32),
        merchant_id="1230000109",
        apiv3_key=generate_apiv3_key(),
        extra_env=dict(extra_env),
    )


@asynccontextmanager
async def running_intake(stack: StackUnderTest, **extra_env: str) -> AsyncIterator[Intake]:
    """Start payment_intake as a process, register merchant 1230000109; kill the process afterwards."""
    intake = new_intake(stack, **extra_env)
    await intake.restart()
    try:
        await register(stack, intake.secrets_key, intake.merchant_id, intake.apiv3_key)
        yield intake
    finally:
        if intake.process.proc.poll() is None:  # type: ignore[attr-defined]
            intake.process.kill()


@asynccontextmanager
async def intake_with_admin(
    stack: StackUnderTest, pki: Pki, **extra_env: str
) -> AsyncIterator[tuple[Intake, admin_grpc.MerchantAdminServiceStub]]:
    """payment_intake as a process serving MerchantAdminService on its admin port (mutual TLS, `pki`'s CA),
    no merchant registered; yields it and a stub that calls as operator "alice". Killed afterwards."""
    pki_dir = stack.tmp_path / f"admin-pki-{uuid.uuid4().hex[:6]}"
    ca_cert, _ = write_pem_pair(pki.ca, pki_dir, "ca")
    cert, key = write_pem_pair(pki.server, pki_dir, "payment_intake")
    admin_port = free_port()
    intake = new_intake(
        stack,
        FAPIAO_INTAKE_ADMIN_PORT=str(admin_port),
        FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE=str(cert),
        FAPIAO_INTAKE_ADMIN_TLS_KEY_FILE=str(key),
        FAPIAO_INTAKE_ADMIN_TLS_CLIENT_CA_FILE=str(ca_cert),
        **extra_env,
    )
    await intake.restart()
    operator = issue_operator_certificate(pki.ca, "alice")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem, private_key=operator.key_pem, certificate_chain=operator.cert_pem
    )
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{admin_port}", credentials) as channel:
            yield intake, admin_grpc.MerchantAdminServiceStub(channel)
    finally:
        if intake.process.proc.poll() is None:  # type: ignore[attr-defined]
            intake.process.kill()


def new_transaction_id() -> str:
    return f"4200{uuid.uuid4().int % 10**24:024d}"
