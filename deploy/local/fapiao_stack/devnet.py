"""A local validator network and transaction builders, shared by the ledger tests and the benchmark."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.ledger_client import (
    SigningKey,
    key_registration_events,
    sign_transaction,
    transaction_event,
)
from fapiao_runtime.topics import LEDGER_TRANSACTIONS

from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.keys import ensure_local_keys, load_authority_key, validator_env

T = ledger_pb2.TransactionType
SELLER_TAX_ID = "91440300MA5FAPIAO1"
BUYER_TAX_ID = "91440300MA5BUYER01"


def invoice_body(invoice_id: str, number: str, total_fen: int = 10_000, buyer_tax_id: str = "") -> bytes:
    body = invoice_pb2.InvoiceBody(
        invoice_id=invoice_id,
        invoice_number=number,
        kind=invoice_pb2.INVOICE_KIND_ORDINARY,
        seller=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Shop", tax_id=SELLER_TAX_ID),
        buyer=invoice_pb2.Party(
            kind=invoice_pb2.PARTY_KIND_COMPANY if buyer_tax_id else invoice_pb2.PARTY_KIND_PERSON,
            name="Buyer",
            tax_id=buyer_tax_id,
        ),
        total_fen=total_fen,
        issue_date="20261124",
    )
    return body.SerializeToString(deterministic=True)


def issue(
    key: SigningKey,
    invoice_id: str,
    number: str,
    total_fen: int = 10_000,
    buyer: str = "",
    *,
    forge_invoice_signature: bool = False,
) -> ledger_pb2.SignedTransaction:
    """A signed ISSUE; with forge_invoice_signature the invoice inside carries a zero signature (the
    transaction itself stays validly signed: the ledger checks submitters, verifiers check the invoice)."""
    raw = invoice_body(invoice_id, number, total_fen, buyer)
    signature = key.sign(raw)
    if forge_invoice_signature:
        signature.signature = bytes(64)
    signed_invoice = invoice_pb2.SignedInvoice(body=raw, signature=signature)
    return sign_transaction(
        ledger_pb2.TransactionBody(
            transaction_id=str(uuid.uuid4()),
            type=T.TRANSACTION_TYPE_ISSUE,
            invoice_id=invoice_id,
            issue=ledger_pb2.IssueAction(invoice=signed_invoice),
        ),
        key,
    )


def reimburse(
    key: SigningKey, kind: ledger_pb2.TransactionType.ValueType, invoice_id: str, organisation: str
) -> ledger_pb2.SignedTransaction:
    body = ledger_pb2.TransactionBody(transaction_id=str(uuid.uuid4()), type=kind, invoice_id=invoice_id)
    if kind == T.TRANSACTION_TYPE_LOCK:
        body.lock.organisation_tax_id = organisation
    elif kind == T.TRANSACTION_TYPE_UNLOCK:
        body.unlock.organisation_tax_id = organisation
    elif kind == T.TRANSACTION_TYPE_CLOSE:
        body.close.organisation_tax_id = organisation
    else:
        raise ValueError("not a reimbursement transaction type")
    return sign_transaction(body, key)


def cancel(key: SigningKey, invoice_id: str) -> ledger_pb2.SignedTransaction:
    return sign_transaction(
        ledger_pb2.TransactionBody(
            transaction_id=str(uuid.uuid4()),
            type=T.TRANSACTION_TYPE_CANCEL,
            invoice_id=invoice_id,
            cancel=ledger_pb2.CancelAction(reason="SALES_RETURN"),
        ),
        key,
    )


def partial(key: SigningKey, invoice_id: str, amount_fen: int) -> ledger_pb2.SignedTransaction:
    return sign_transaction(
        ledger_pb2.TransactionBody(
            transaction_id=str(uuid.uuid4()),
            type=T.TRANSACTION_TYPE_PARTIAL_RED_LETTER,
            invoice_id=invoice_id,
            partial_red_letter=ledger_pb2.PartialRedLetterAction(amount_fen=amount_fen, reason="SALES_DISCOUNT"),
        ),
        key,
    )


def registration(
    key: SigningKey, role: ledger_pb2.SubmitterRole.ValueType, subject: str, revoked: bool = False
) -> ledger_pb2.KeyRegistration:
    return ledger_pb2.KeyRegistration(
        key_id=key.key_id,
        public_key=key.public_raw,
        role=role,
        subject=subject,
        revoked=revoked,
        registration_id=str(uuid.uuid4()),
    )


@dataclass
class LedgerNetwork:
    """Validator processes over one test's broker and database, plus registered submitter keys."""

    stack: StackUnderTest
    validators: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    # Per-validator overrides, by 1-based index (e.g. a deliberately misconfigured validator).
    validator_overrides: dict[int, dict[str, str]] = field(default_factory=dict)
    processes: dict[int, ServiceProcess] = field(default_factory=dict)
    issuer: SigningKey = field(default_factory=lambda: SigningKey.generate(f"issuer-{uuid.uuid4().hex[:8]}"))
    reimburser: SigningKey = field(default_factory=lambda: SigningKey.generate(f"reimb-{uuid.uuid4().hex[:8]}"))
    producer: AIOKafkaProducer | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.stack.tmp_path / "ledger-run"

    async def start(self) -> None:
        self.env = ensure_local_keys(self.run_dir, self.validators)
        await asyncio.gather(*(self.start_validator(i) for i in range(1, self.validators + 1)))
        self.producer = new_producer(self.stack.kafka_bootstrap, client_id="ledger-test", linger_ms=5)
        await self.producer.start()
        authority = load_authority_key(Path(self.env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"]))
        for reg in (
            registration(self.issuer, ledger_pb2.SUBMITTER_ROLE_ISSUER, SELLER_TAX_ID),
            registration(self.reimburser, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "reimbursement"),
        ):
            await self.send_registration(authority, reg)

    async def send_registration(self, authority: SigningKey, reg: ledger_pb2.KeyRegistration) -> None:
        assert self.producer is not None
        for event in key_registration_events(authority, reg, LEDGER_TRANSACTIONS.partitions, "test"):
            await self.producer.send_and_wait(
                self.stack.topic(event.topic), value=event.envelope_bytes, key=event.key, partition=event.partition
            )

    async def start_validator(self, index: int) -> ServiceProcess:
        env = {
            **self.env,
            **validator_env(self.run_dir, self.validators, index),
            **self.extra_env,
            **self.validator_overrides.get(index, {}),
        }
        process = await self.stack.start_service("ledger", **env)  # type: ignore[arg-type]
        self.processes[index] = process
        return process

    async def submit(self, signed: list[ledger_pb2.SignedTransaction]) -> None:
        """Produce transactions in order (per invoice order is preserved by the idempotent producer)."""
        assert self.producer is not None
        futures = []
        for tx in signed:
            body = ledger_pb2.TransactionBody.FromString(tx.body)
            event = transaction_event(tx, body.invoice_id, "test")
            futures.append(
                await self.producer.send(self.stack.topic(event.topic), value=event.envelope_bytes, key=event.key)
            )
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        for process in self.processes.values():
            if process.proc is not None and process.proc.poll() is None:  # type: ignore[attr-defined]
                process.kill()

    def schema(self, index: int) -> str:
        return f"ledger_{index}"


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}; last value {last!r}")


async def count_final(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                f"SELECT count(*) FROM {schema}.transactions t JOIN {schema}.blocks b USING (chain_id, height)"
                " WHERE b.final"
            )
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()
