"""invoice_minting throughput: payment events -> offers, and concurrent claims -> signed, numbered invoices.

The service runs as its own process (as deployed); the load comes from this process over real gRPC
channels. Figures:
  mint_offers_per_s     PaymentSucceeded events consumed into claim offers (one DB transaction each)
  mint_claims_per_s     ClaimInvoice calls completed per second (each: validated, numbered, taxed, signed
                        twice, written with its ISSUE transaction to the outbox), CLAIMS_IN_FLIGHT at a time
  mint_claim_p50_ms / mint_claim_p99_ms   client-observed claim latency under that load
  mint_outbox_drain_s   time after the last claim until every ISSUE reached Kafka
  mint_server_cpu_ms_per_claim   CPU time (user + system) of the service process per measured claim,
                        including its outbox relay: a figure that does not depend on what else the machine runs
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_runtime.topics import MERCHANTS, PAYMENTS
from fapiao_stack.harness import StackUnderTest

from fapiao_bench.cpu import cpu_seconds
from fapiao_bench.stats import percentile

MERCHANTS_COUNT = 100
REGIONS = ("44", "11", "31")
PAYMENTS_PER_MERCHANT = 40
WARMUP_CLAIMS = 300
CLAIMS_IN_FLIGHT = 256
CHANNELS = 8


def _uscc(n: int) -> str:
    first17 = f"91440300{n:09d}"
    return first17 + uscc_check_char(first17)


async def _wait(conn: asyncpg.Connection, query: str, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await conn.fetchval(query) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{query} did not reach {expected}")
        await asyncio.sleep(0.05)


async def _publish(env: StackUnderTest) -> list[tuple[str, str]]:
    producer = AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    payments = []
    try:
        for m in range(MERCHANTS_COUNT):
            event = payments_pb2.MerchantRegistered(
                merchant_id=f"m{m}",
                legal_name=f"商户{m}有限公司",
                tax_id=_uscc(m + 1),
                region_code=REGIONS[m % 3],
                default_tax_classification_code="3070401000000000000",
                default_item_name="餐饮服务",
                default_tax_rate_bp=600,
            )
            envelope = make_envelope(event, aggregate_id=f"m{m}", producer="bench")
            await producer.send(env.topic(MERCHANTS.name), envelope.SerializeToString(), key=f"m{m}".encode())
        for p in range(PAYMENTS_PER_MERCHANT):
            for m in range(MERCHANTS_COUNT):
                payment_id = f"m{m}-p{p}"
                payment = payments_pb2.Payment(
                    payment_id=payment_id,
                    merchant_id=f"m{m}",
                    out_trade_no=payment_id,
                    amount_fen=1000 + p,
                    currency="CNY",
                    status=payments_pb2.PAYMENT_STATUS_SUCCEEDED,
                )
                envelope = make_envelope(
                    payments_pb2.PaymentSucceeded(payment=payment), aggregate_id=f"m{m}:{payment_id}", producer="bench"
                )
                await producer.send(
                    env.topic(PAYMENTS.name), envelope.SerializeToString(), key=envelope.aggregate_id.encode()
                )
                payments.append((f"m{m}", payment_id))
        await producer.flush()
    finally:
        await producer.stop()
    return payments


async def run(env: StackUnderTest) -> dict[str, float]:
    authority = SigningKey("authority-bench", Ed25519PrivateKey.generate())
    key_file = env.tmp_path / "authority.pem"
    key_file.write_bytes(authority.to_pem())
    key_file.chmod(0o600)
    service = await env.start_service(
        "invoice_minting",
        FAPIAO_SECRETS_KEY=os.urandom(32).hex(),
        FAPIAO_LEDGER_AUTHORITY_KEY_FILE=str(key_file),
        FAPIAO_LEDGER_AUTHORITY_KEY_ID="authority-bench",
        FAPIAO_LOG_LEVEL="WARNING",
    )
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") for _ in range(CHANNELS)]
    stubs = [api_grpc.InvoiceMintingServiceStub(c) for c in channels]
    conn = await asyncpg.connect(env.database_url)
    try:
        started = time.perf_counter()
        payments = await _publish(env)
        await _wait(conn, "SELECT count(*) FROM invoice_minting.claim_offers", len(payments), 120)
        offers_s = time.perf_counter() - started
        await _wait(conn, "SELECT count(*) FROM invoice_minting.issuer_keys", MERCHANTS_COUNT, 60)

        limit = asyncio.Semaphore(CLAIMS_IN_FLIGHT)

        async def token_of(i: int, merchant_id: str, payment_id: str) -> str:
            async with limit:
                response = await stubs[i % CHANNELS].GetClaimOfferByPayment(
                    api.GetClaimOfferByPaymentRequest(merchant_id=merchant_id, payment_id=payment_id, omit_qr_code=True)
                )
            return str(response.claim_url).rsplit("/", 1)[1]

        tokens = await asyncio.gather(*(token_of(i, m, p) for i, (m, p) in enumerate(payments)))
        latencies: list[float] = []

        async def claim(i: int, token: str) -> None:
            async with limit:
                began = time.perf_counter()
                response = await stubs[i % CHANNELS].ClaimInvoice(
                    api.ClaimInvoiceRequest(
                        claim_token=token,
                        buyer=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三"),
                        idempotency_key=f"bench-{i}",
                    ),
                    timeout=60,
                )
                latencies.append(time.perf_counter() - began)
            assert response.invoice.status == invoice_pb2.INVOICE_STATUS_PENDING

        await asyncio.gather(*(claim(i, t) for i, t in enumerate(tokens[:WARMUP_CLAIMS])))
        latencies.clear()
        measured = tokens[WARMUP_CLAIMS:]
        pid = service.proc.pid  # type: ignore[attr-defined]
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(claim(i + WARMUP_CLAIMS, t) for i, t in enumerate(measured)))
        claims_s = time.perf_counter() - started
        drain_started = time.perf_counter()
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM invoice_minting.outbox WHERE sent_at IS NULL"):
            if time.monotonic() > deadline:
                raise TimeoutError("outbox did not drain")
            await asyncio.sleep(0.05)
        drain_s = time.perf_counter() - drain_started
        cpu_per_claim_ms = (cpu_seconds(pid) - cpu_before) / len(measured) * 1000
        numbers = await conn.fetchval("SELECT count(DISTINCT invoice_number) FROM invoice_minting.invoices")
        assert numbers == len(tokens), "every claim must have its own number"
        return {
            "mint_offers_per_s": len(payments) / offers_s,
            "mint_claims_per_s": len(measured) / claims_s,
            "mint_claim_p50_ms": percentile(latencies, 0.5) * 1000,
            "mint_claim_p99_ms": percentile(latencies, 0.99) * 1000,
            "mint_outbox_drain_s": drain_s,
            "mint_server_cpu_ms_per_claim": cpu_per_claim_ms,
        }
    finally:
        await conn.close()
        for channel in channels:
            await channel.close()
        service.terminate()
