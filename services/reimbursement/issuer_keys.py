"""Issuer (seller) public keys, learned from authority-signed key registrations on the ledger log.

VerifyInvoice checks the issuer's signature over the exact invoice bytes with the key the signature
names; that key must have been registered for the invoice's seller by a registry authority whose
public key this service is configured with (FAPIAO_LEDGER_AUTHORITY_KEYS). Registrations are read
from ledger.tx.v1 by a consumer group and upserted into issuer_keys (idempotent), so a restart resumes
from the committed offsets instead of re-reading the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.consumer import commit_applied, watch_lag
from fapiao_runtime.envelope import parse_envelope
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.kafka import BATCHED_FETCH
from fapiao_runtime.ledger_trust import PublicKeys, ed25519_verify, verify_signature
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuerKey:
    key_id: str
    public_key: bytes
    seller_tax_id: str
    revoked: bool


def registration_from_record(raw: bytes | None, authority_keys: PublicKeys) -> ledger_pb2.KeyRegistration | None:
    """The KeyRegistration in a ledger.tx.v1 record if it is one and an authority signed it; else None."""
    if raw is None:
        return None
    try:
        envelope = parse_envelope(raw)
    except FapiaoError:
        return None
    if envelope.event_type != ledger_pb2.LedgerRecord.DESCRIPTOR.full_name:
        return None
    try:
        record = ledger_pb2.LedgerRecord.FromString(envelope.payload)
        if not record.HasField("key_registration"):
            return None
        signed = record.key_registration
        if not verify_signature(authority_keys, signed.signature, signed.body):
            log.warning("ignoring key registration without a valid authority signature")
            return None
        return ledger_pb2.KeyRegistration.FromString(signed.body)
    except DecodeError:
        return None


async def store_registration(conn: asyncpg.Connection | asyncpg.Pool, registration: ledger_pb2.KeyRegistration) -> None:
    """Upsert an ISSUER key (others are ignored). Revocation sticks: a revoked key id is never re-enabled."""
    if registration.role != ledger_pb2.SUBMITTER_ROLE_ISSUER:
        return
    if registration.revoked:
        await conn.execute(
            "UPDATE issuer_keys SET revoked = true, updated_at = now() WHERE key_id = $1", registration.key_id
        )
        return
    if len(registration.public_key) != 32:
        return
    await conn.execute(
        "INSERT INTO issuer_keys (key_id, public_key, seller_tax_id, registration_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_id) DO NOTHING",
        registration.key_id,
        registration.public_key,
        registration.subject,
        registration.registration_id,
    )


async def find_issuer_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> IssuerKey | None:
    row = await conn.fetchrow(
        "SELECT key_id, public_key, seller_tax_id, revoked FROM issuer_keys WHERE key_id = $1", key_id
    )
    if row is None:
        return None
    return IssuerKey(row["key_id"], bytes(row["public_key"]), row["seller_tax_id"], row["revoked"])


def issuer_signature_problem(signed: invoice_pb2.SignedInvoice, seller_tax_id: str, key: IssuerKey | None) -> str:
    """Empty when `signed` carries a valid signature by a live key registered for `seller_tax_id`."""
    if key is None:
        return "UNKNOWN_ISSUER_KEY"
    if key.revoked:
        return "ISSUER_KEY_REVOKED"
    if key.seller_tax_id != seller_tax_id:
        return "ISSUER_KEY_NOT_FOR_SELLER"
    if signed.signature.algorithm != "Ed25519":
        return "BAD_ISSUER_SIGNATURE"
    try:
        public_key = Ed25519PublicKey.from_public_bytes(key.public_key)
    except ValueError:
        return "BAD_ISSUER_SIGNATURE"
    if not ed25519_verify(public_key, signed.signature.signature, signed.body):
        return "BAD_ISSUER_SIGNATURE"
    return ""


class IssuerKeyRecorder:
    """Consumes ledger.tx.v1 (consumer group) and stores authority-signed ISSUER key registrations.

    It reads in fetch windows (a registration is rare among the records), and after a restart or an
    outage it may be far behind the log: `caught_up` lets a check that found no key wait until every
    record the log held at that moment is stored, instead of calling a fresh issuer's invoice forged.
    """

    def __init__(
        self, bootstrap: str, topic: str, group_id: str, pool: asyncpg.Pool, authority_keys: PublicKeys
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._pool = pool
        self._authority_keys = authority_keys
        self.stored = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._committed = asyncio.Event()  # set (and replaced) after each offset commit
        watch_lag(group_id, lambda: self._consumer)  # fapiao_consumer_lag while it runs

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=1000,
            **BATCHED_FETCH,  # registrations are rare among the records read: no need to chase each one
        )
        await consumer.start()
        self._consumer = consumer
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=300, max_records=1000)
                if not batch:
                    continue
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batch.items():
                    offsets[tp] = records[-1].offset + 1
                    for record in records:
                        registration = registration_from_record(record.value, self._authority_keys)
                        if registration is not None:
                            await store_registration(self._pool, registration)
                            self.stored += 1
                # Offsets only after the upserts are durable: a crash replays (upserts are idempotent).
                await commit_applied(consumer, offsets)
                self._committed.set()
                self._committed = asyncio.Event()
        finally:
            self._consumer = None
            with contextlib.suppress(Exception):
                await consumer.stop()

    @property
    def assigned(self) -> bool:
        """True once the consumer runs and the group gave it partitions."""
        return self._consumer is not None and bool(self._consumer.assignment())

    async def caught_up(self, timeout_s: float = 2.0) -> bool:
        """Wait until the group (this replica or another, the table is shared) has stored every record
        the log holds now: committed offsets at the end offsets read at the call. False if that does not
        happen within `timeout_s` (far behind, or the consumer is down): the caller must not conclude."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                partitions = [
                    TopicPartition(self._topic, p) for p in sorted(consumer.partitions_for_topic(self._topic) or ())
                ]
                if not partitions:
                    return False
                ends = await consumer.end_offsets(partitions)
                while True:
                    committed = self._committed
                    offsets = [await consumer.committed(tp) for tp in partitions]
                    if all((o or 0) >= ends[tp] for o, tp in zip(offsets, partitions, strict=True)):
                        return True
                    await committed.wait()
        except TimeoutError:
            return False
