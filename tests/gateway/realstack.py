"""The real services behind the gateway: 4 ledger validators, payment_intake, invoice_minting, gateway.

Every process is started with stack.start_service (python -m <service>) against the test's real Kafka
and PostgreSQL; the payment platform is played with payment_intake.wechatpay (signed, encrypted v3
notifications posted to the GATEWAY's webhook).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import grpc
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao_runtime.errors import reason_of
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.keys import ensure_local_keys, validator_env
from fapiao_stack.procs import free_port
from payment_intake import merchants
from payment_intake.domain import payment_id_for
from payment_intake.wechatpay import PlatformSigner, generate_apiv3_key, transaction_resource

VALIDATORS = 4
MERCHANT_ID = "1900000109"
MERCHANT_TAX_ID = "9144030071526726X" + uscc_check_char("9144030071526726X")
MERCHANT_NAME = "Shenzhen Fapiao Teahouse Ltd"


@dataclass
class RealStack:
    stack: StackUnderTest
    processes: list[ServiceProcess] = field(default_factory=list)
    ledger_env: dict[str, str] = field(default_factory=dict)
    gateway_url: str = ""
    minting_endpoint: str = ""
    platform: PlatformSigner = field(default_factory=lambda: PlatformSigner.generate())
    apiv3_key: bytes = field(default_factory=generate_apiv3_key)

    async def start(self) -> None:
        run_dir = self.stack.tmp_path / "stack-run"
        self.ledger_env = ensure_local_keys(run_dir, VALIDATORS)
        secrets_key = secrets.token_bytes(32)
        gateway_port, minting_port = free_port(), free_port()
        webhook_port = free_port()
        validator_ports = [free_port() for _ in range(VALIDATORS)]
        # Everything starts at once: no process needs another to be up before it reports SERVING.
        started = await asyncio.gather(
            *(
                self.stack.start_service(
                    "ledger", port=port, **self.ledger_env, **validator_env(run_dir, VALIDATORS, index)
                )
                for index, port in enumerate(validator_ports, start=1)
            ),
            self.stack.start_service(
                "payment_intake",
                FAPIAO_WEBHOOK_PORT=str(webhook_port),
                FAPIAO_SECRETS_KEY=secrets_key.hex(),
                FAPIAO_PAYER_HASH_KEY=secrets.token_bytes(32).hex(),
            ),
            self.stack.start_service(
                "invoice_minting",
                port=minting_port,
                FAPIAO_SECRETS_KEY=secrets.token_bytes(32).hex(),
                FAPIAO_LEDGER_AUTHORITY_KEY_FILE=self.ledger_env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"],
                FAPIAO_LEDGER_AUTHORITY_KEY_ID="authority-1",
                FAPIAO_CLAIM_BASE_URL=f"http://127.0.0.1:{gateway_port}/claim",
            ),
            self.stack.start_service(
                "gateway",
                health="http",
                port=gateway_port,
                FAPIAO_INTAKE_WEBHOOK_URL=f"http://127.0.0.1:{webhook_port}",
                FAPIAO_MINTING_ENDPOINT=f"127.0.0.1:{minting_port}",
                FAPIAO_LEDGER_ENDPOINTS=",".join(f"127.0.0.1:{port}" for port in validator_ports),
                FAPIAO_LEDGER_VALIDATOR_KEYS=self.ledger_env["FAPIAO_LEDGER_VALIDATOR_KEYS"],
                FAPIAO_GATEWAY_SECRET=secrets.token_hex(32),
            ),
            return_exceptions=True,
        )
        self.processes += [p for p in started if isinstance(p, ServiceProcess)]
        failures = [p for p in started if not isinstance(p, ServiceProcess)]
        if failures:
            raise failures[0]
        self.minting_endpoint = f"127.0.0.1:{minting_port}"
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        await merchants.register_merchant_at(
            self.stack.database_url,
            secrets_key,
            merchants.MerchantProfile(
                MERCHANT_ID, MERCHANT_NAME, MERCHANT_TAX_ID, "44", "3070401000000000000", "Tea", 600
            ),
            apiv3_key=self.apiv3_key,
            platform_keys={self.platform.serial: self.platform.public_key_pem()},
        )

    async def stop(self) -> None:
        """SIGTERM every process at once (each has its own graceful-shutdown bound)."""
        running = [p for p in self.processes if p.proc is not None and p.proc.poll() is None]  # type: ignore[attr-defined]
        await asyncio.gather(*(asyncio.to_thread(process.terminate) for process in running))

    def logs(self) -> str:
        return "\n".join(f"--- {p.module}:{p.port}\n{p.log_text()[-3000:]}" for p in self.processes)

    async def pay_through_gateway(self, http: aiohttp.ClientSession, total_fen: int) -> str:
        """Post a signed, encrypted payment notification to the gateway; returns the payment id."""
        transaction_id = f"4200{uuid.uuid4().int % 10**24:024d}"
        resource = transaction_resource(
            mchid=MERCHANT_ID,
            transaction_id=transaction_id,
            out_trade_no=f"order-{transaction_id[-8:]}",
            total_fen=total_fen,
            openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            success_time=datetime.now(UTC),
        )
        delivery = self.platform.deliver(self.platform.notification_body(self.apiv3_key, resource))
        deadline = time.monotonic() + 30
        while True:
            # The merchant reaches intake's cache a moment after registration; retry like the platform would.
            async with http.post(
                f"{self.gateway_url}/v1/notify/wechatpay/{MERCHANT_ID}", data=delivery.body, headers=delivery.headers
            ) as response:
                answer = await response.text()
                if response.status in (200, 204):
                    return str(payment_id_for(MERCHANT_ID, transaction_id))
            assert time.monotonic() < deadline, f"webhook answered {response.status}: {answer}"
            await asyncio.sleep(0.5)
            delivery = self.platform.deliver(delivery.body)

    async def claim_url(self, payment_id: str, timeout_s: float = 30) -> str:
        """The claim URL minting made for the payment (the QR code's content)."""
        async with grpc.aio.insecure_channel(self.minting_endpoint) as channel:
            stub = minting_grpc.InvoiceMintingServiceStub(channel)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    reply = await stub.GetClaimOfferByPayment(
                        minting_pb2.GetClaimOfferByPaymentRequest(merchant_id=MERCHANT_ID, payment_id=payment_id),
                        timeout=5,
                    )
                    return str(reply.claim_url)
                except grpc.aio.AioRpcError as error:
                    if reason_of(error) != "OFFER_NOT_FOUND" or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.3)
