"""Helpers for invoice_minting tests: keys, merchants, payments, a gRPC client, and a stand-in ledger."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fapiao.common.v1 import envelope_pb2
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import make_envelope, parse_envelope, unpack
from fapiao_runtime.ledger_client import SigningKey, result_event_id
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_runtime.topics import LEDGER_RESULTS, LEDGER_TRANSACTIONS, MERCHANTS, PAYMENTS
from fapiao_stack.harness import ServiceProcess, StackUnderTest, topic_reader
from invoice_minting.deps import MintingDeps
from invoice_minting.events import on_merchant_event
from invoice_minting.issuer_keys import IssuerKeys
from invoice_minting.secrets_box import SecretsBox
from invoice_minting.settings import MintingSettings

AUTHORITY_KEY_ID = "authority-test"


def uscc(n: int, region: str = "440300") -> str:
    """A valid unified social credit code numbered `n`."""
    first17 = f"91{region}{n:09d}"
    return first17 + uscc_check_char(first17)


@dataclass
class MintingUnderTest:
    service: ServiceProcess
    channel: grpc.aio.Channel
    stub: api_grpc.InvoiceMintingServiceStub
    authority: SigningKey
    producer: AIOKafkaProducer
    stack: StackUnderTest

    async def send(self, logical_topic: str, envelope: envelope_pb2.EventEnvelope) -> None:
        await self.producer.send_and_wait(
            self.stack.topic(logical_topic), value=envelope.SerializeToString(), key=envelope.aggregate_id.encode()
        )

    async def register_merchant(
        self, merchant_id: str, tax_id: str, region: str = "44", rate_bp: int = 600, wait: bool = True
    ) -> None:
        """Publish MerchantRegistered; with `wait`, return once the service holds the merchant's issuer key
        (merchants.v1 and payments.v1 are separate topics, so nothing else orders them)."""
        event = payments_pb2.MerchantRegistered(
            merchant_id=merchant_id,
            legal_name=f"{merchant_id} 有限公司",
            tax_id=tax_id,
            region_code=region,
            default_tax_classification_code="3070401000000000000",
            default_item_name="餐饮服务",
            default_tax_rate_bp=rate_bp,
        )
        await self.send(MERCHANTS.name, make_envelope(event, aggregate_id=merchant_id, producer="test"))
        if wait:
            await self.wait_merchant_key(merchant_id)

    async def pay(
        self, merchant_id: str, payment_id: str, amount_fen: int, items: list[payments_pb2.PaymentItem] | None = None
    ) -> None:
        payment = payments_pb2.Payment(
            payment_id=payment_id,
            merchant_id=merchant_id,
            transaction_id=f"tx-{payment_id}",
            out_trade_no=f"order-{payment_id}",
            amount_fen=amount_fen,
            payer_total_fen=amount_fen,
            currency="CNY",
            items=items or [],
            status=payments_pb2.PAYMENT_STATUS_SUCCEEDED,
        )
        payment.success_time.GetCurrentTime()
        envelope = make_envelope(
            payments_pb2.PaymentSucceeded(payment=payment),
            aggregate_id=f"{merchant_id}:order-{payment_id}",
            producer="test",
        )
        await self.send(PAYMENTS.name, envelope)

    async def refund(self, merchant_id: str, payment_id: str, refund_fen: int, refunded_total_fen: int) -> None:
        refund = payments_pb2.Refund(
            refund_id=f"rf-{uuid.uuid4().hex[:8]}",
            payment_id=payment_id,
            merchant_id=merchant_id,
            transaction_id=f"tx-{payment_id}",
            refund_fen=refund_fen,
        )
        payment = payments_pb2.Payment(payment_id=payment_id, merchant_id=merchant_id, refunded_fen=refunded_total_fen)
        envelope = make_envelope(
            payments_pb2.PaymentRefunded(refund=refund, payment=payment),
            aggregate_id=f"{merchant_id}:order-{payment_id}",
            producer="test",
        )
        await self.send(PAYMENTS.name, envelope)

    async def claim_url(
        self, merchant_id: str, payment_id: str, timeout_s: float = 60, omit_qr_code: bool = False
    ) -> api.GetClaimOfferByPaymentResponse:
        """Wait until the payment's offer exists; return it with its claim URL."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await self.stub.GetClaimOfferByPayment(
                    api.GetClaimOfferByPaymentRequest(
                        merchant_id=merchant_id, payment_id=payment_id, omit_qr_code=omit_qr_code, wait_ms=5_000
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def token(self, merchant_id: str, payment_id: str) -> str:
        return (await self.claim_url(merchant_id, payment_id, omit_qr_code=True)).claim_url.rsplit("/", 1)[1]

    async def wait_merchant_key(self, merchant_id: str, timeout_s: float = 60) -> list[api.IssuerKey]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return list((await self.stub.ListIssuerKeys(api.ListIssuerKeysRequest(merchant_id=merchant_id))).keys)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def wait_status(self, invoice_id: str, status: int, timeout_s: float = 60) -> invoice_pb2.Invoice:
        deadline = time.monotonic() + timeout_s
        while True:
            invoice = (await self.stub.GetInvoice(api.GetInvoiceRequest(invoice_id=invoice_id))).invoice
            if invoice.status == status or time.monotonic() > deadline:
                assert invoice.status == status, f"status {invoice.status}, wanted {status}"
                return invoice
            await asyncio.sleep(0.1)


def person(name: str = "张三", tax_id: str = "") -> invoice_pb2.Party:
    return invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name=name, tax_id=tax_id)


def company(name: str, tax_id: str) -> invoice_pb2.Party:
    return invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name=name, tax_id=tax_id)


def write_authority_key(directory: Path) -> tuple[SigningKey, Path]:
    authority = SigningKey(AUTHORITY_KEY_ID, Ed25519PrivateKey.generate())
    path = directory / "authority.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(authority.to_pem())
    return authority, path


MIGRATIONS = Path(__file__).parents[2] / "services" / "invoice_minting" / "migrations"


def direct_deps() -> MintingDeps:
    """Minting dependencies for tests that call the minting functions directly on a database."""
    settings = MintingSettings(
        secrets_key_text="",
        dev_mode=False,
        dev_state_dir=Path("."),
        authority_key_file="",
        authority_key_id="authority-test",
        claim_base_url="https://fapiao.test/claim",
        offer_ttl_s=3600,
        channel="2",
        ledger_partitions=2,
        claim_workers=1,
        claim_batch_max=10,
        claim_queue_max=10,
    )
    box = SecretsBox(os.urandom(32))
    authority = SigningKey("authority-test", Ed25519PrivateKey.generate())
    return MintingDeps(settings=settings, keys=IssuerKeys(box, authority, 2, "test"), box=box)


async def register_direct_merchant(conn: asyncpg.Connection, deps: MintingDeps, merchant_id: str) -> None:
    """Apply a MerchantRegistered event for `merchant_id` (region 44, 6 % default rate) directly."""
    merchant = payments_pb2.MerchantRegistered(
        merchant_id=merchant_id,
        legal_name="卖方",
        tax_id=uscc(1),
        region_code="44",
        default_tax_classification_code="1",
        default_item_name="服务",
        default_tax_rate_bp=600,
    )
    await on_merchant_event(conn, make_envelope(merchant, aggregate_id=merchant_id, producer="t"), deps)


@contextlib.asynccontextmanager
async def minting_service(stack: StackUnderTest, **extra_env: str) -> AsyncIterator[MintingUnderTest]:
    authority, key_path = write_authority_key(stack.tmp_path)
    env = {
        "FAPIAO_SECRETS_KEY": os.urandom(32).hex(),
        "FAPIAO_LEDGER_AUTHORITY_KEY_FILE": str(key_path),
        "FAPIAO_LEDGER_AUTHORITY_KEY_ID": AUTHORITY_KEY_ID,
        "FAPIAO_CLAIM_BASE_URL": "https://fapiao.test/claim",
        **extra_env,
    }
    service = await stack.start_service("invoice_minting", **env)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        yield MintingUnderTest(
            service, channel, api_grpc.InvoiceMintingServiceStub(channel), authority, producer, stack
        )
    finally:
        await producer.stop()
        await channel.close()
        service.terminate()


@dataclass
class LedgerStandIn:
    """Plays the ledger for tests: reads ledger.tx.v1, verifies registrations and signatures, answers results.

    Accepts every transaction whose signature verifies with a key the authority registered for the
    invoice's seller; records every record per partition in order.
    """

    stack: StackUnderTest
    authority_public: Ed25519PublicKey
    accept: bool = True
    keys: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    records: dict[int, list[ledger_pb2.LedgerRecord]] = field(default_factory=dict)
    transactions: list[ledger_pb2.TransactionBody] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            async with topic_reader(self.stack.kafka_bootstrap, self.stack.topic(LEDGER_TRANSACTIONS.name)) as reader:
                while not stop.is_set():
                    batch = await reader.getmany(timeout_ms=100)
                    for tp, records in batch.items():
                        for record in records:
                            ledger_record = unpack(parse_envelope(record.value), ledger_pb2.LedgerRecord)
                            self.records.setdefault(tp.partition, []).append(ledger_record)
                            await self._apply(producer, ledger_record)
        finally:
            await producer.stop()

    async def _apply(self, producer: AIOKafkaProducer, record: ledger_pb2.LedgerRecord) -> None:
        if record.HasField("key_registration"):
            signed = record.key_registration
            self.authority_public.verify(signed.signature.signature, signed.body)
            registration = ledger_pb2.KeyRegistration.FromString(signed.body)
            self.keys[registration.key_id] = (registration.public_key, registration.subject)
            return
        if not record.HasField("transaction"):
            return
        signed_tx = record.transaction
        body = ledger_pb2.TransactionBody.FromString(signed_tx.body)
        public, subject = self.keys.get(signed_tx.signature.key_id, (b"", ""))
        ok = bool(public)
        if ok:
            Ed25519PublicKey.from_public_bytes(public).verify(signed_tx.signature.signature, signed_tx.body)
            carried = {
                "issue": body.issue.invoice,
                "cancel": body.cancel.red_letter_invoice,
                "partial_red_letter": body.partial_red_letter.red_letter_invoice,
            }[body.WhichOneof("action") or "issue"]
            seller = invoice_pb2.InvoiceBody.FromString(carried.body).seller.tax_id
            if seller != subject:
                ok = False
                self.problems.append(f"transaction {body.transaction_id}: key subject {subject} != seller {seller}")
        else:
            self.problems.append(f"transaction {body.transaction_id} signed by unregistered key")
        self.transactions.append(body)
        result = ledger_pb2.TransactionResult(
            transaction_id=body.transaction_id,
            invoice_id=body.invoice_id,
            type=body.type,
            accepted=ok and self.accept,
            rejection_reason="" if ok and self.accept else "TEST_REJECTED",
            chain_id=0,
            height=len(self.transactions),
        )
        envelope = make_envelope(
            result,
            aggregate_id=body.transaction_id,
            producer="ledger-stand-in",
            event_id=result_event_id(body.transaction_id),
        )
        # Two validators' copies of the same result: the service must apply it once.
        for _ in range(2):
            await producer.send_and_wait(
                self.stack.topic(LEDGER_RESULTS.name),
                value=envelope.SerializeToString(),
                key=body.transaction_id.encode(),
            )


@contextlib.asynccontextmanager
async def ledger_stand_in(minting: MintingUnderTest, accept: bool = True) -> AsyncIterator[LedgerStandIn]:
    ledger = LedgerStandIn(minting.stack, minting.authority.public_key, accept=accept)
    stop = asyncio.Event()
    task = asyncio.ensure_future(ledger.run(stop))
    try:
        yield ledger
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def wait_until(predicate, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not reached")
