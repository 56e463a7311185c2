"""Issuer (seller) public keys and the one rule for trusting them: the ledger's.

A finance department must be able to trust an issuer key without trusting the service that made it.
The ledger is that source: a registry authority signs each ISSUER key registration, every validator
applies the registrations in log order (`ledger.state_machine.apply_registration`), and the ledger
accepts an ISSUE only when its transaction is signed by a live key registered for the invoice's
seller. What the validators then sign (a quorum over the block header) attests exactly that. So:

- a key learned from the log (`registration_from_record`, followed by `IssuerKeyFollower`) is trusted
  for what the authority registered: its seller, and its revocation;
- whatever delivered a key, `issuer_key_problem` accepts it only when it also verifies the ISSUE
  transaction of the quorum-verified receipt, under the key id the invoice's signature names. Ed25519
  under `ed25519_verify` (canonical keys of the prime-order subgroup) binds a signature to one key, so
  no key other than the one the validators checked can pass: a key handed out by invoice_minting
  (`ListIssuerKeys`, which the gateway uses as a delivery channel, having no log reader) is trusted
  only as far as the ledger vouches for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from google.protobuf.message import DecodeError

from fapiao_runtime.consumer import commit_applied, watch_lag
from fapiao_runtime.envelope import parse_envelope
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.kafka import BATCHED_FETCH
from fapiao_runtime.ledger_trust import ED25519, PublicKeys, ed25519_verify, verify_signature

log = logging.getLogger(__name__)

# The reasons an issuer key or signature is refused (VerifyInvoice's `problem`, the gateway's verdict).
UNKNOWN_ISSUER_KEY = "UNKNOWN_ISSUER_KEY"
ISSUER_KEY_REVOKED = "ISSUER_KEY_REVOKED"
ISSUER_KEY_NOT_FOR_SELLER = "ISSUER_KEY_NOT_FOR_SELLER"
BAD_ISSUER_SIGNATURE = "BAD_ISSUER_SIGNATURE"
ISSUER_KEY_NOT_ON_LEDGER = "ISSUER_KEY_NOT_ON_LEDGER"
ISSUER_REASONS = frozenset(
    {UNKNOWN_ISSUER_KEY, ISSUER_KEY_REVOKED, ISSUER_KEY_NOT_FOR_SELLER, BAD_ISSUER_SIGNATURE, ISSUER_KEY_NOT_ON_LEDGER}
)


@dataclass(frozen=True)
class IssuerKey:
    """An issuer public key and what its source says about it.

    `seller_tax_id` empty: the source does not say (the ledger's acceptance of the ISSUE still binds
    the key to the seller, see the module doc). `revoked`: the registry authority revoked it.
    """

    key_id: str
    public_key: bytes
    seller_tax_id: str = ""
    revoked: bool = False


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


def issuer_key_problem(
    signed: invoice_pb2.SignedInvoice,
    seller_tax_id: str,
    key: IssuerKey | None,
    issue_transaction: ledger_pb2.SignedTransaction,
) -> str:
    """Empty when `signed` carries a valid signature by `key`, a live key of `seller_tax_id` that the
    ledger accepted `issue_transaction` (from a quorum-verified ISSUE receipt) under; else the reason.
    Pure: no I/O."""
    if key is None or key.key_id != signed.signature.key_id:
        return UNKNOWN_ISSUER_KEY
    if key.revoked:
        return ISSUER_KEY_REVOKED
    if key.seller_tax_id and key.seller_tax_id != seller_tax_id:
        return ISSUER_KEY_NOT_FOR_SELLER
    if signed.signature.algorithm != ED25519:
        return BAD_ISSUER_SIGNATURE
    try:
        public_key = Ed25519PublicKey.from_public_bytes(key.public_key)
    except ValueError:
        return BAD_ISSUER_SIGNATURE
    if not ed25519_verify(public_key, signed.signature.signature, signed.body):
        return BAD_ISSUER_SIGNATURE
    if issue_transaction.signature.key_id != key.key_id or not verify_signature(
        {key.key_id: public_key}, issue_transaction.signature, issue_transaction.body
    ):
        return ISSUER_KEY_NOT_ON_LEDGER
    return ""


# Stores one authority-signed registration (idempotent: a replay after a crash stores it again).
RegistrationSink = Callable[[ledger_pb2.KeyRegistration], Awaitable[None]]


class IssuerKeyFollower:
    """Consumes ledger.tx.v1 (consumer group) and hands authority-signed key registrations to `store`.

    It reads in fetch windows (a registration is rare among the records), and after a restart or an
    outage it may be far behind the log: `caught_up` lets a check that found no key wait until every
    record the log held at that moment is stored, instead of calling a fresh issuer's invoice forged.
    """

    def __init__(
        self, bootstrap: str, topic: str, group_id: str, store: RegistrationSink, authority_keys: PublicKeys
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._store = store
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
                            await self._store(registration)
                            self.stored += 1
                # Offsets only after the registrations are stored: a crash replays (storing is idempotent).
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
        """Wait until the group (this replica or another: what it stores is shared) has stored every
        record the log holds now: committed offsets at the end offsets read at the call. False if that
        does not happen within `timeout_s` (far behind, or the consumer is down): the caller must not
        conclude."""
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
