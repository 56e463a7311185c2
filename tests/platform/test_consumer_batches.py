"""Records fetched together are applied in one transaction; a failing record falls back to one by one."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from fapiao.common.v1 import envelope_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest

pytestmark = pytest.mark.integration


class Effects:
    """A handler and a batch handler that record each applied event; "poison" can never be applied."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    async def apply(self, conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1, $2)", envelope.event_id, envelope.aggregate_id)
        if envelope.aggregate_id == "poison":
            raise InvalidArgument("POISON", "this record can never be applied")

    async def apply_batch(self, conn: asyncpg.Connection, batch: list[envelope_pb2.EventEnvelope]) -> None:
        self.batch_sizes.append(len(batch))
        for envelope in batch:
            await self.apply(conn, envelope)


async def _consume(
    stack: StackUnderTest, envelopes: list[envelope_pb2.EventEnvelope], effects: Effects, batched: bool
) -> tuple[EventConsumer, dict[str, int], list[str]]:
    """Produce `envelopes` to one partition, consume them all; (consumer, effects by aggregate, dead letters)."""
    pool = await create_pool(stack.database_url, "batches")
    try:
        await apply_migrations(pool, "batches", None)
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE effects (event_id uuid, aggregate_id text)")
        producer = new_producer(stack.kafka_bootstrap, client_id="batch-test")
        await producer.start()
        try:
            for envelope in envelopes:  # one key, so one partition: fetched in large batches, in order
                await producer.send(stack.topic(PAYMENTS.name), envelope.SerializeToString(), key=b"k")
            await producer.flush()
        finally:
            await producer.stop()
        consumer = EventConsumer(
            bootstrap=stack.kafka_bootstrap,
            topics=[stack.topic(PAYMENTS.name)],
            group_id=f"batches-{uuid.uuid4().hex[:6]}",
            pool=pool,
            handler=effects.apply,
            batch_handler=effects.apply_batch if batched else None,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(consumer.run(stop))
        try:
            for _ in range(300):
                if consumer.applied + consumer.duplicates + consumer.dead_lettered >= len(envelopes):
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT aggregate_id, count(*) AS n FROM effects GROUP BY aggregate_id")
            dead = await conn.fetch("SELECT error FROM dead_letters")
    finally:
        await pool.close()
    return consumer, {r["aggregate_id"]: r["n"] for r in rows}, [r["error"] for r in dead]


def _events(count: int) -> list[envelope_pb2.EventEnvelope]:
    return [
        make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=f"agg-{i}", producer="test") for i in range(count)
    ]


@pytest.mark.parametrize("batched", [False, True], ids=["handler", "batch_handler"])
async def test_a_bad_record_in_a_batch_is_dead_lettered_and_its_neighbours_applied_once(
    stack: StackUnderTest, batched: bool
) -> None:
    # 30 distinct events, one poison in the middle, and a second copy of 5 of them (duplicates).
    envelopes = _events(30)
    envelopes.insert(15, make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id="poison", producer="test"))
    envelopes += envelopes[:5]
    effects = Effects()
    consumer, applied, dead = await _consume(stack, envelopes, effects, batched)
    assert applied == {f"agg-{i}": 1 for i in range(30)}
    assert dead == ["POISON: this record can never be applied"]
    assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (30, 5, 1)
    if batched:  # the batch handler was tried on a fetched batch, and its failure rolled back
        assert max(effects.batch_sizes) > 1


async def test_a_batch_handler_gets_each_new_event_once(stack: StackUnderTest) -> None:
    # 40 distinct events and 15 second copies (same event ids), most within the same fetch as the first.
    envelopes = _events(40)
    envelopes = envelopes[:20] + envelopes[15:25] + envelopes[20:] + envelopes[35:]
    effects = Effects()
    consumer, applied, dead = await _consume(stack, envelopes, effects, True)
    assert applied == {f"agg-{i}": 1 for i in range(40)}
    assert dead == []
    assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (40, 15, 0)
    # Fresh events only (a lone fetched record goes to the handler instead).
    assert sum(effects.batch_sizes) <= 40 and max(effects.batch_sizes) > 1
