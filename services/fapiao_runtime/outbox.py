"""Transactional outbox: enqueue an event in the caller's transaction; a relay publishes it.

Guarantees: an event whose transaction committed is published at least once; duplicates after a
crash between publish and mark are removed by consumers' processed_events table. A single active
relay per schema (elected with an advisory lock) publishes committed rows in id order, so an event
written by a transaction that started after another one committed is published after that one's
events (causal order, e.g. a key registration before the ISSUE signed with it). Rows of transactions
that were running concurrently may be published in either order: they were not ordered to begin with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from fapiao_runtime.envelope import OutgoingEvent

log = logging.getLogger(__name__)


OUTBOX_INSERT = "INSERT INTO outbox (event_id, topic, kafka_key, kafka_partition, payload)"


def outbox_source(first: int) -> str:
    """A row source `ob(event_id, topic, kafka_key, kafka_partition, payload, n)` over the arrays of
    `outbox_arrays`, bound from parameter `$first` on; n is the event's position (order of the ids).

    For statements that write their own rows and their events at once (one round trip, atomic without
    an explicit transaction): `... ob_rows AS (OUTBOX_INSERT SELECT ob.event_id, ob.topic, ob.kafka_key,
    ob.kafka_partition, ob.payload FROM <guard>, outbox_source(k) ORDER BY ob.n)`.
    """
    return (
        f"unnest(${first}::uuid[], ${first + 1}::text[], ${first + 2}::bytea[], ${first + 3}::int[],"
        f" ${first + 4}::bytea[]) WITH ORDINALITY AS ob(event_id, topic, kafka_key, kafka_partition, payload, n)"
    )


def outbox_arrays(events: Sequence[OutgoingEvent]) -> list[list[object]]:
    """The five parameters of `outbox_source`."""
    return [
        [e.event_id for e in events],
        [e.topic for e in events],
        [e.key for e in events],
        [e.partition for e in events],
        [e.envelope_bytes for e in events],
    ]


async def enqueue(conn: asyncpg.Connection, events: Sequence[OutgoingEvent]) -> None:
    """Insert `events` into the outbox of the connection's schema. Call inside the business transaction.

    The logical topic name is stored; the relay adds the deployment's topic prefix.
    """
    if not events:
        return
    # One statement whatever the count (executemany would run the INSERT and its trigger per row);
    # ids follow the order of `events`.
    await conn.execute(
        f"{OUTBOX_INSERT} SELECT event_id, topic, kafka_key, kafka_partition, payload FROM {outbox_source(1)}"
        " ORDER BY n",
        *outbox_arrays(events),
    )


async def unsent(conn: asyncpg.Connection, event_ids: Sequence[str]) -> int:
    """How many of the events `event_ids` are still waiting in the outbox: committed here, not yet
    accepted by Kafka (the relay has not run, or the broker refuses or cannot be reached)."""
    value = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND event_id = ANY($1::uuid[])", list(event_ids)
    )
    return int(value)


class OutboxRelay:
    """Publishes unsent outbox rows to Kafka, then marks them sent.

    batch_size bounds the rows read per round; poll_interval_s bounds the delay when a NOTIFY is missed.
    linger_s: after a round that published several rows (the outbox is busy), wait this long before
    the next, so each round carries more rows: fewer queries and Kafka requests per event. A round
    of one row (light load) is followed at once, so latency stays one round at low rates.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        schema: str,
        topic_prefix: str = "",
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        retention_s: int = 3600,
        linger_s: float = 0.005,
    ) -> None:
        assert 0 < batch_size <= 10_000 and 0 <= linger_s <= 0.1
        self._pool = pool
        self._producer = producer
        self._schema = schema
        self._prefix = topic_prefix
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._retention_s = retention_s
        self._linger_s = linger_s
        self._wakeup = asyncio.Event()
        self.published = 0

    def _lock_key(self) -> int:
        return int.from_bytes(hashlib.sha256(f"outbox-relay:{self._schema}".encode()).digest()[:8], "big", signed=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set. Only one relay per schema is active; others wait as standbys."""
        async with self._pool.acquire() as leader_conn:
            while not stop.is_set():
                if await leader_conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key()):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                return
            channel = f"{self._schema}_outbox"
            await leader_conn.add_listener(channel, self._on_notify)
            try:
                rounds = 0
                while not stop.is_set():
                    # Clear before reading, not after: a NOTIFY for a row committed while relay_once runs
                    # must wake the next round at once instead of waiting for the poll interval.
                    self._wakeup.clear()
                    sent = await self.relay_once()
                    rounds += 1
                    if rounds % 200 == 0:
                        await self._purge()
                    if 1 < sent < self._batch_size and self._linger_s:
                        await asyncio.sleep(self._linger_s)
                    if sent < self._batch_size:
                        waiter = asyncio.ensure_future(self._wakeup.wait())
                        stopper = asyncio.ensure_future(stop.wait())
                        await asyncio.wait(
                            {waiter, stopper},
                            timeout=self._poll_interval_s,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        waiter.cancel()
                        stopper.cancel()
            finally:
                await leader_conn.remove_listener(channel, self._on_notify)
                await leader_conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key())

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; return how many were published."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, topic, kafka_key, kafka_partition, payload FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size,
            )
            if not rows:
                return 0
            futures = [
                await self._producer.send(
                    f"{self._prefix}{r['topic']}",
                    value=r["payload"],
                    key=r["kafka_key"],
                    partition=r["kafka_partition"],
                )
                for r in rows
            ]
            # Every send must be acknowledged (acks=all) before the rows are marked sent.
            await asyncio.gather(*futures)
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        self.published += len(rows)
        return len(rows)

    async def _purge(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)",
                float(self._retention_s),
            )

    async def backlog(self) -> int:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            return int(value)
