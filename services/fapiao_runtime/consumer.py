"""Idempotent event consumers.

For each record: a PostgreSQL transaction inserts (consumer, event_id) into processed_events and
applies the handler's effect; a duplicate event_id is skipped. The records of one partition fetched
together share one transaction; if any of them fails, they are re-applied one transaction each.
Kafka offsets are committed only after the transactions of every record up to them have committed,
so a crash replays, never skips.
A record whose handler keeps failing after bounded retries is stored in dead_letters with the error.
A lost database or broker (`errors.unavailable_cause`) is never the record's fault: the failure is
raised without dead-lettering or committing anything, and the consumer is run again from the last
committed offset once the dependency is back (`service.Task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from fapiao.common.v1 import envelope_pb2

from fapiao_runtime import metrics, tracing
from fapiao_runtime.envelope import parse_envelope
from fapiao_runtime.errors import FapiaoError, unavailable_cause
from fapiao_runtime.logs import event_id_var

log = logging.getLogger(__name__)

# Commit failures that only mean "the group rebalanced": the records are replayed, never lost.
# IllegalStateError is aiokafka's "partition is not assigned": revoked while its records were applied.
_REBALANCED = (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

EventHandler = Callable[[asyncpg.Connection, envelope_pb2.EventEnvelope], Awaitable[None]]
# Applies several events (in log order, none seen before) in the caller's transaction, with the same
# effect as EventHandler applied to each in turn.
BatchHandler = Callable[[asyncpg.Connection, list[envelope_pb2.EventEnvelope]], Awaitable[None]]


async def mark_processed(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """Record that `consumer` processed `event_id`; False if it already had (call in the effect's transaction)."""
    inserted = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        uuid.UUID(event_id),
    )
    return bool(inserted)


async def mark_all_processed(
    conn: asyncpg.Connection, consumer: str, envelopes: list[envelope_pb2.EventEnvelope]
) -> list[envelope_pb2.EventEnvelope]:
    """mark_processed for many events in one statement; return those not processed before, in order.

    An event id repeated within `envelopes` counts once (its first occurrence).
    """
    ids = [uuid.UUID(e.event_id) for e in envelopes]
    inserted = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, e FROM unnest($2::uuid[]) AS e"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        ids,
    )
    fresh_ids = {r["event_id"] for r in inserted}
    fresh = []
    for event_id, envelope in zip(ids, envelopes, strict=True):
        if event_id in fresh_ids:
            fresh_ids.discard(event_id)
            fresh.append(envelope)
    return fresh


# Positions asked of the client wait for its fetcher; a partition still being positioned is left out.
_POSITION_TIMEOUT_S = 1.0


async def partition_lag(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Records not yet consumed per assigned partition: the partition's end offset (the last stable
    offset for read_committed consumers) minus the consumer's position."""
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    ends = await consumer.end_offsets(assigned)
    lags: dict[TopicPartition, int] = {}
    for tp in assigned:
        with contextlib.suppress(Exception):
            position = await asyncio.wait_for(consumer.position(tp), _POSITION_TIMEOUT_S)
            lags[tp] = max(0, ends[tp] - position)
    return lags


ConsumerSource = Callable[[], AIOKafkaConsumer | None]


class LagWatch:
    """A Kafka consumer whose lag `report_consumer_lag` publishes as fapiao_consumer_lag{topic, partition,
    group}; `source` returns the running consumer (None while it is not running)."""

    def __init__(self, group: str, source: ConsumerSource) -> None:
        self.group = group
        self.source = source

    def close(self) -> None:
        """Stop reporting this consumer (its partitions leave the gauge at the next report)."""
        _WATCHES.pop(id(self), None)


_WATCHES: dict[int, LagWatch] = {}
_REPORTED: set[tuple[str, str, str]] = set()


def watch_lag(group: str, source: ConsumerSource) -> LagWatch:
    """Report the lag of the consumer `source()` returns, under `group` (its consumer group, or a name of
    its own for a consumer without one), at every gauge refresh of the service (`service.run_service`).
    EventConsumer and LedgerResultWaiter watch themselves; a component that reads Kafka with its own
    AIOKafkaConsumer (the ledger's validators) calls this once, and `close()` on the watch when done."""
    watch = LagWatch(group, source)
    _WATCHES[id(watch)] = watch
    return watch


async def report_consumer_lag() -> int:
    """Set fapiao_consumer_lag for every partition of every watched consumer, drop the partitions no
    watched consumer holds any more (revoked, or the consumer stopped); return the total lag."""
    global _REPORTED
    current: dict[tuple[str, str, str], int] = {}
    for watch in list(_WATCHES.values()):
        consumer = watch.source()
        if consumer is None:
            continue
        for tp, lag in (await partition_lag(consumer)).items():
            current[(tp.topic, str(tp.partition), watch.group)] = lag
    for labels in _REPORTED - current.keys():
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(*labels)
    for labels, lag in current.items():
        metrics.CONSUMER_LAG.labels(*labels).set(lag)
    _REPORTED = set(current)
    return sum(current.values())


@contextlib.contextmanager
def handling(envelope: envelope_pb2.EventEnvelope) -> Iterator[None]:
    """Within the block, the event's id is in every log line and its trace continues (`tracing`): what the
    block logs and the events it makes carry the trace id of the request that caused `envelope`. For
    consumers outside EventConsumer (the ledger's validators), around the handling of each record."""
    token = event_id_var.set(envelope.event_id)
    try:
        with tracing.continued_from(envelope.traceparent):
            yield
    finally:
        event_id_var.reset(token)


async def commit_applied(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
    """Commit the offsets of applied records; False when a rebalance took the partitions away first.

    Partitions revoked while the batch was applied belong to their new owner now: it re-reads them from
    the last committed offset and skips what processed_events already holds. Losing such a commit only
    means a replay, so it is never a reason to stop the service.
    """
    assigned = consumer.assignment()
    owned = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    if not owned:
        return not offsets
    try:
        await consumer.commit(owned)
    except _REBALANCED as exc:
        log.warning("offset commit lost to a rebalance; records will be replayed", extra={"err": repr(exc)})
        return False
    return len(owned) == len(offsets)


class EventConsumer:
    """Consume `topics` in consumer group `group_id`, applying `handler` exactly once per event_id.

    max_batch bounds records fetched per poll; max_attempts bounds retries of a failing record before
    it is dead-lettered (expected FapiaoError failures are dead-lettered at once: retrying cannot help).
    fetch: extra fetch settings for the Kafka consumer, e.g. `kafka.BATCHED_FETCH` off the latency path.
    batch_handler: applies a fetched batch with set-based statements (one per kind of change instead of
    one per event); `handler` still applies records one by one when a batch fails.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: list[str],
        group_id: str,
        pool: asyncpg.Pool,
        handler: EventHandler,
        consumer_name: str | None = None,
        max_batch: int = 200,
        max_attempts: int = 5,
        fetch: Mapping[str, int] | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._group_id = group_id
        self._pool = pool
        self._handler = handler
        self._batch_handler = batch_handler
        self._name = consumer_name or group_id
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._fetch = dict(fetch or {})
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            client_id=self._name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self._max_batch,
            **self._fetch,
        )
        self._consumer = consumer
        watch = watch_lag(self._group_id, lambda: self._consumer)
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=self._max_batch)
                if not batch:
                    continue
                offsets: dict[TopicPartition, int] = {}
                for tp, records in batch.items():
                    await self.apply(records)
                    offsets[tp] = records[-1].offset + 1
                await commit_applied(consumer, offsets)
        finally:
            self._consumer = None
            watch.close()
            with contextlib.suppress(Exception):
                await consumer.stop()

    @property
    def name(self) -> str:
        """The consumer's name: its processed_events key and its metrics label."""
        return self._name

    async def lag(self) -> int:
        """Records not yet consumed across assigned partitions."""
        consumer = self._consumer
        return sum((await partition_lag(consumer)).values()) if consumer is not None else 0

    async def apply(self, records: list[ConsumerRecord]) -> None:
        """Apply one partition's fetched records in order, in ONE transaction when they all succeed.

        run() calls this for every partition of each fetched batch and commits the offsets after it
        returns. A transaction per record costs its round trips (BEGIN, mark, effect, COMMIT) for every
        event; one per fetched batch shares them. If anything in the batch fails, the whole transaction
        rolls back (handlers only touch the database) and the records are applied one by one, with
        retries and dead letters, exactly as a single record would be. A lost dependency (see
        `unavailable_cause`) raises instead: no record is dead-lettered for it and no offset is
        committed, so the records are read again from the committed offset.
        """
        if len(records) == 1:
            await self._apply(records[0])
            return
        try:
            envelopes = [parse_envelope(record.value) for record in records]
        except FapiaoError:
            for record in records:
                await self._apply(record)
            return
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if self._batch_handler is not None:
                    fresh = await mark_all_processed(conn, self._name, envelopes)
                    if fresh:
                        # A batch of one trace is applied in it; events of several traces share this call,
                        # so a batch handler that produces events or logs per event continues each one's
                        # trace with `handling(envelope)`.
                        traces = {envelope.traceparent for envelope in fresh}
                        with tracing.continued_from(traces.pop()) if len(traces) == 1 else contextlib.nullcontext():
                            await self._batch_handler(conn, fresh)
                        for envelope in fresh:
                            with handling(envelope):
                                self._log_applied(envelope)
                    applied = len(fresh)
                else:
                    applied = await self._apply_each(conn, envelopes)
        except Exception as exc:
            if unavailable_cause(exc) is not None:
                raise  # nothing was applied; the records are read again once the dependency is back
            log.info("batch of %d records failed; applying them one by one", len(records), extra={"err": repr(exc)})
            for record in records:
                await self._apply(record)
            return
        self.applied += applied
        self.duplicates += len(envelopes) - applied

    async def _apply_each(self, conn: asyncpg.Connection, envelopes: list[envelope_pb2.EventEnvelope]) -> int:
        """The handler on each envelope not processed before (in the caller's transaction); how many."""
        applied = 0
        for envelope in envelopes:
            with handling(envelope):
                if await mark_processed(conn, self._name, envelope.event_id):
                    await self._handler(conn, envelope)
                    self._log_applied(envelope)
                    applied += 1
        return applied

    def _log_applied(self, envelope: envelope_pb2.EventEnvelope) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event applied", extra={"consumer": self._name, "event_type": envelope.event_type})

    async def _apply(self, record: ConsumerRecord) -> None:
        try:
            envelope = parse_envelope(record.value)
        except FapiaoError as exc:
            await self._dead_letter(record, "", exc.details)
            return
        with handling(envelope):
            for attempt in range(1, self._max_attempts + 1):
                try:
                    async with self._pool.acquire() as conn, conn.transaction():
                        if not await mark_processed(conn, self._name, envelope.event_id):
                            self.duplicates += 1
                            return
                        await self._handler(conn, envelope)
                    self.applied += 1
                    self._log_applied(envelope)
                    return
                except FapiaoError as exc:
                    await self._dead_letter(record, envelope.event_id, exc.details)
                    return
                except Exception as exc:
                    if unavailable_cause(exc) is not None:
                        raise  # not the record's fault: never dead-letter it for a lost dependency
                    if attempt == self._max_attempts:
                        if not isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError | OSError):
                            log.exception("event handler failed; dead-lettered")
                        await self._dead_letter(record, envelope.event_id, repr(exc))
                        return
                    await asyncio.sleep(min(2.0, 0.05 * 2**attempt))

    async def _dead_letter(self, record: ConsumerRecord, event_id: str, error: str) -> None:
        log.warning("event dead-lettered", extra={"topic": record.topic, "offset": record.offset, "error": error})
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO dead_letters (consumer, topic, kafka_partition, kafka_offset, event_id, error, payload)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                self._name,
                record.topic,
                record.partition,
                record.offset,
                event_id,
                error[:2000],
                record.value or b"",
            )
        self.dead_lettered += 1
