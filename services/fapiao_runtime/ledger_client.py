"""Client side of the ledger: submitter keys, signed transactions, and awaiting final results.

Wire contract (see docs/ledger.md):
- ledger.tx.v1 records are EventEnvelopes whose payload is a LedgerRecord; key = aggregate_id =
  invoice_id; event_id = transaction_id (a UUID) for transactions.
- Key registrations are signed by a registry authority key and written to EVERY partition.
- ledger.results.v1 carries a TransactionResult per transaction once its block is final; every
  validator publishes a copy with event_id = uuid5(NAMESPACE_URL, "fapiao:tx-result:" + transaction_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fapiao.common.v1 import signature_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2_grpc
from google.protobuf.message import DecodeError

from fapiao_runtime.consumer import LagWatch, watch_lag
from fapiao_runtime.envelope import OutgoingEvent, make_envelope, outgoing, parse_envelope, unpack
from fapiao_runtime.errors import DeadlineExceeded, FapiaoError, InvalidArgument, ResourceExhausted, unavailable_cause
from fapiao_runtime.grpc_client import internal_channel, internal_credentials
from fapiao_runtime.resilience import Backoff
from fapiao_runtime.topics import LEDGER_RESULTS, LEDGER_TRANSACTIONS

log = logging.getLogger(__name__)

ED25519 = "Ed25519"


# Rejections decided before the record's signature was verified (ledger docs: they claim no id and are
# published under their own event id). Anyone able to write to the ledger topic can cause one with a
# copied transaction id, so a submitter never takes one for its transaction's outcome.
UNVERIFIED_REJECTIONS = frozenset({"MALFORMED", "WRONG_CHAIN", "BAD_SIGNATURE", "UNKNOWN_SUBMITTER_KEY", "KEY_REVOKED"})


def result_event_id(transaction_id: str) -> uuid.UUID:
    """Event id shared by every validator's copy of a transaction's result."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "fapiao:tx-result:" + transaction_id)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of `topic`, fetched from the brokers (a consumer without subscriptions has no
    metadata cached yet). Raises RuntimeError if the topic does not appear within timeout_s, and
    KafkaConnectionError (a lost broker: `errors.unavailable_cause`) if no broker answered at all."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            cluster = await consumer._client.fetch_all_metadata()
        except KafkaError as exc:  # "Unable to get cluster metadata over all known brokers"
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaConnectionError(f"no broker answered for the partitions of {topic}") from exc
            await asyncio.sleep(0.5)
            continue
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"topic {topic} not found")
        await asyncio.sleep(0.2)


async def consumer_at_end(bootstrap: str, topic: str, **options: object) -> AIOKafkaConsumer:
    """A started consumer without a group, assigned every partition of `topic` and positioned at their
    ends now (so every record published after this returns is read). `options` go to AIOKafkaConsumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        # Resolve the end offsets now, so nothing published after the return is skipped.
        for tp in tps:
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


class SigningKey:
    """An Ed25519 private key with the key id verifiers look it up by. Never log or repr the key."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        if not key_id:
            raise ValueError("key_id is required")
        self.key_id = key_id
        self._private = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.public_raw: bytes = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        return cls(key_id, Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> signature_pb2.Signature:
        """Signature over exactly `data`, naming this key."""
        return signature_pb2.Signature(algorithm=ED25519, key_id=self.key_id, signature=self._private.sign(data))

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with `passphrase` when given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes, passphrase: bytes | None = None) -> SigningKey:
        """Load a PKCS#8 PEM Ed25519 key; ValueError if it is not one (or the passphrase is wrong)."""
        key = serialization.load_pem_private_key(pem, password=passphrase)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key_id, key)


def sign_transaction(body: ledger_pb2.TransactionBody, key: SigningKey) -> ledger_pb2.SignedTransaction:
    """Serialize `body` once (deterministically) and sign those exact bytes."""
    if not body.transaction_id:
        raise InvalidArgument("MALFORMED", "transaction_id is required")
    try:
        uuid.UUID(body.transaction_id)
    except ValueError:
        raise InvalidArgument("MALFORMED", "transaction_id must be a UUID") from None
    raw = body.SerializeToString(deterministic=True)
    return ledger_pb2.SignedTransaction(body=raw, signature=key.sign(raw))


def transaction_event(signed: ledger_pb2.SignedTransaction, invoice_id: str, producer: str) -> OutgoingEvent:
    """Outbox entry for a signed transaction: key = invoice_id, event_id = transaction_id."""
    body = ledger_pb2.TransactionBody.FromString(signed.body)
    if body.invoice_id != invoice_id:
        raise InvalidArgument("MALFORMED", "invoice_id differs from the signed transaction's")
    envelope = make_envelope(
        ledger_pb2.LedgerRecord(transaction=signed),
        aggregate_id=invoice_id,
        producer=producer,
        event_id=uuid.UUID(body.transaction_id),
    )
    return outgoing(LEDGER_TRANSACTIONS.name, envelope)


def sign_key_registration(
    authority: SigningKey, registration: ledger_pb2.KeyRegistration
) -> ledger_pb2.SignedKeyRegistration:
    raw = registration.SerializeToString(deterministic=True)
    return ledger_pb2.SignedKeyRegistration(body=raw, signature=authority.sign(raw))


def key_registration_events(
    authority: SigningKey, registration: ledger_pb2.KeyRegistration, partitions: int, producer: str
) -> list[OutgoingEvent]:
    """One outbox entry per partition of ledger.tx.v1, so every chain sees the registration."""
    if not registration.registration_id or not registration.key_id:
        raise InvalidArgument("MALFORMED", "registration_id and key_id are required")
    if len(registration.public_key) != 32 and not registration.revoked:
        raise InvalidArgument("MALFORMED", "public_key must be a raw 32-byte Ed25519 key")
    signed = sign_key_registration(authority, registration)
    record = ledger_pb2.LedgerRecord(key_registration=signed)
    events = []
    for partition in range(partitions):
        envelope = make_envelope(
            record,
            aggregate_id=f"key:{registration.key_id}",
            producer=producer,
            event_id=uuid.uuid5(
                uuid.NAMESPACE_URL, f"fapiao:key-registration:{registration.registration_id}:{partition}"
            ),
        )
        events.append(outgoing(LEDGER_TRANSACTIONS.name, envelope, partition=partition))
    return events


class LedgerResultWaiter:
    """Resolves waiters with final TransactionResults read from ledger.results.v1.

    Reads every partition from the end as of start() (no consumer group, nothing committed), so a
    waiter learns only of results published after start(); use LedgerService.GetTransactionResult
    for older ones. The last `cache_size` results are remembered so that wait() called just after a
    result arrived still resolves.
    """

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "",
        *,
        client_id: str = "ledger-result-waiter",
        cache_size: int = 100_000,
        max_waiters: int = 100_000,
    ) -> None:
        self._bootstrap = bootstrap
        self._results_topic = f"{topic_prefix}{LEDGER_RESULTS.name}"
        self._tx_topic = f"{topic_prefix}{LEDGER_TRANSACTIONS.name}"
        self._client_id = client_id
        self._cache_size = cache_size
        self._max_waiters = max_waiters
        # Waiters by transaction id, each with the invoice id it expects (None: any).
        self._waiters: dict[str, list[tuple[asyncio.Future[ledger_pb2.TransactionResult], str | None]]] = {}
        self._recent: OrderedDict[str, ledger_pb2.TransactionResult] = OrderedDict()
        # Rejections of records whose signature was never verified: reasons for a time-out only.
        self._unverified: OrderedDict[str, ledger_pb2.TransactionResult] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._lag: LagWatch | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and position at the end of every partition; results after this call are seen."""
        consumer = await consumer_at_end(
            self._bootstrap,
            self._results_topic,
            client_id=self._client_id,
            isolation_level="read_committed",
            max_poll_records=2000,
        )
        self._consumer = consumer
        self._lag = watch_lag(self._client_id, lambda: self._consumer)
        self.read(consumer)

    def read(self, consumer: AIOKafkaConsumer) -> None:
        """Resolve waiters with the records `consumer` fetches (each passed to handle()) until stop().

        start() calls this with the consumer it opens at the end of ledger.results.v1. A caller that
        already holds a consumer positioned on that topic may call it instead of start(); stop() then
        stops the reading but leaves that consumer to its caller.
        """
        self._task = asyncio.ensure_future(self._run(consumer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        for futures in self._waiters.values():
            for future, _ in futures:
                if not future.done():
                    future.cancel()
        self._waiters.clear()

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        backoff = Backoff(0.2, 5.0)
        failing = False
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Logged once per outage (with a traceback only when it is not a lost broker).
                if not failing:
                    failing = True
                    if unavailable_cause(exc) is None:
                        log.exception("reading ledger results failed; retrying")
                    else:
                        log.warning("reading ledger results failed; retrying", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                failing = False
                backoff.reset()
                log.info("reading ledger results again")
            for records in batch.values():
                for record in records:
                    self.handle(record.key, record.value)

    def handle(self, key: bytes | None, raw: bytes | None) -> None:
        """Take one record of ledger.results.v1 (its key, the transaction id, and its envelope); the
        reading loop calls this for every record it fetches.

        A result whose envelope carries the transaction's own event id (see result_event_id) decides
        the waiters for its transaction id and invoice, and is remembered for later wait() calls. A
        rejection carrying any other event id (its signature was never verified) decides nothing: it
        only explains a time-out. Undecodable records are ignored.
        """
        # Every validator publishes a copy keyed by transaction id: decode only the first, unless
        # someone still waits (another chain's transaction may have used the same id).
        if key is not None:
            tx_id = key.decode(errors="replace")
            if tx_id in self._recent and tx_id not in self._waiters:
                return
        if raw is None:
            return
        try:
            envelope = parse_envelope(raw)
            result = unpack(envelope, ledger_pb2.TransactionResult)
        except (FapiaoError, DecodeError):
            log.warning("ignoring undecodable ledger result")
            return
        # A rejection of a record whose signature was never verified carries another event id. Anyone
        # who can write to the topic can produce such a record with a copied transaction id, so it never
        # decides a waiter: it is kept only to explain a time-out.
        if envelope.event_id != str(result_event_id(result.transaction_id)):
            self._unverified[result.transaction_id] = result
            if len(self._unverified) > self._cache_size:
                self._unverified.popitem(last=False)
            return
        self._deliver(result)

    def _deliver(self, result: ledger_pb2.TransactionResult) -> None:
        tx_id = result.transaction_id
        if tx_id not in self._recent:
            self._recent[tx_id] = result
            if len(self._recent) > self._cache_size:
                self._recent.popitem(last=False)
        waiting = self._waiters.pop(tx_id, [])
        # Transaction ids are unique per chain: a result for another invoice is not this waiter's.
        others: list[tuple[asyncio.Future[ledger_pb2.TransactionResult], str | None]] = [
            (f, i) for f, i in waiting if i is not None and i != result.invoice_id
        ]
        if others:
            self._waiters[tx_id] = others
        for future, invoice_id in waiting:
            if (invoice_id is None or invoice_id == result.invoice_id) and not future.done():
                future.set_result(result)

    def _register(
        self, transaction_id: str, invoice_id: str | None = None
    ) -> asyncio.Future[ledger_pb2.TransactionResult]:
        if self._task is None:
            raise RuntimeError("LedgerResultWaiter.start() was not called")
        future: asyncio.Future[ledger_pb2.TransactionResult] = asyncio.get_running_loop().create_future()
        known = self._recent.get(transaction_id)
        if known is not None and (invoice_id is None or known.invoice_id == invoice_id):
            future.set_result(known)
            return future
        if len(self._waiters) >= self._max_waiters:
            raise ResourceExhausted("TOO_MANY_WAITERS", "too many transactions awaiting a ledger result")
        self._waiters.setdefault(transaction_id, []).append((future, invoice_id))
        return future

    def _unregister(self, transaction_id: str, future: asyncio.Future[ledger_pb2.TransactionResult]) -> None:
        futures = self._waiters.get(transaction_id)
        if futures:
            futures[:] = [(f, i) for f, i in futures if f is not future]
            if not futures:
                del self._waiters[transaction_id]

    async def _await(
        self, transaction_id: str, future: asyncio.Future[ledger_pb2.TransactionResult], timeout_s: float
    ) -> ledger_pb2.TransactionResult:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
        except TimeoutError:
            unverified = self._unverified.get(transaction_id)
            seen = (
                f" (only a record with this id whose signature was not verified: {unverified.rejection_reason})"
                if unverified is not None
                else ""
            )
            raise DeadlineExceeded(
                "LEDGER_RESULT_TIMEOUT", f"no final ledger result for {transaction_id} within {timeout_s}s{seen}"
            ) from None
        finally:
            self._unregister(transaction_id, future)

    async def wait(
        self, transaction_id: str, timeout_s: float, invoice_id: str | None = None
    ) -> ledger_pb2.TransactionResult:
        """The final result of `transaction_id` (for `invoice_id`, when given: ids are unique per chain);
        DeadlineExceeded(LEDGER_RESULT_TIMEOUT) after timeout_s."""
        return await self._await(transaction_id, self._register(transaction_id, invoice_id), timeout_s)

    async def submit_and_wait(
        self,
        producer: AIOKafkaProducer,
        signed: ledger_pb2.SignedTransaction,
        invoice_id: str,
        timeout_s: float,
    ) -> ledger_pb2.TransactionResult:
        """Produce `signed` (idempotent producer, acks=all) and await its final result.

        The waiter is registered before producing, so a fast result cannot be missed. Retrying with
        the same signed transaction is safe: the ledger answers a duplicate with the original result.
        """
        event = transaction_event(signed, invoice_id, self._client_id)
        transaction_id = str(event.event_id)
        future = self._register(transaction_id, invoice_id)
        try:
            await producer.send_and_wait(self._tx_topic, value=event.envelope_bytes, key=event.key)
        except BaseException:
            self._unregister(transaction_id, future)
            raise
        return await self._await(transaction_id, future, timeout_s)


# Worth asking another validator: the one asked is down (UNAVAILABLE), stopping (its in-flight calls end
# CANCELLED) or too slow (DEADLINE_EXCEEDED).
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})


class NoValidatorAnswered(Exception):
    """Every validator asked failed with a failover code; `errors` in the order they were asked."""

    def __init__(self, method: str, errors: list[grpc.aio.AioRpcError]) -> None:
        super().__init__(f"no validator answered {method}: {', '.join(e.code().name for e in errors)}")
        self.errors = errors


class ValidatorClient:
    """LedgerService of several validators, the one client every caller of the validators uses.

    Each call goes to the next validator in turn and fails over to the others on `FAILOVER_CODES` (a
    validator that is down, stopping or slow), each attempt bounded by `timeout_s`. Nothing a validator
    answers is trusted blindly: callers verify receipts against the validators' keys.
    """

    def __init__(self, endpoints: Sequence[str], timeout_s: float) -> None:
        if not endpoints:
            raise ValueError("at least one ledger endpoint is required (FAPIAO_LEDGER_ENDPOINTS)")
        credentials = internal_credentials()
        self._channels = [internal_channel(endpoint, credentials) for endpoint in endpoints]
        self.stubs = [ledger_service_pb2_grpc.LedgerServiceStub(channel) for channel in self._channels]
        self._next = itertools.cycle(range(len(self.stubs)))
        self.timeout_s = timeout_s

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def in_turn(self, count: int | None = None) -> list[ledger_service_pb2_grpc.LedgerServiceStub]:
        """`count` stubs (default: all), starting with the next validator in turn."""
        start = next(self._next)
        total = len(self.stubs)
        wanted = total if count is None else min(max(1, count), total)
        return [self.stubs[(start + k) % total] for k in range(wanted)]

    async def call(self, method: str, request: Any, *, failover: frozenset[grpc.StatusCode] = FAILOVER_CODES) -> Any:
        """The first answer of the validators asked in turn. An error with a code outside `failover` is
        raised at once (the validator answered: NOT_FOUND, INVALID_ARGUMENT ...); NoValidatorAnswered
        when every validator failed with one of `failover`."""
        errors: list[grpc.aio.AioRpcError] = []
        for stub in self.in_turn():
            try:
                return await getattr(stub, method)(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as error:
                if error.code() not in failover:
                    raise
                errors.append(error)
        raise NoValidatorAnswered(method, errors)
