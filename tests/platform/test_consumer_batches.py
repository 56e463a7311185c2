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


async def test_a_bad_record_in_a_batch_is_dead_lettered_and_its_neighbours_applied_once(
    stack: StackUnderTest,
) -> None:
    pool = await create_pool(stack.database_url, "batches")
    await apply_migrations(pool, "batches", None)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE effects (event_id uuid, aggregate_id text)")

    async def apply(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
        await conn.execute("INSERT INTO effects VALUES ($1, $2)", envelope.event_id, envelope.aggregate_id)
        if envelope.aggregate_id == "poison":
            raise InvalidArgument("POISON", "this record can never be applied")

    # 30 distinct events, one poison in the middle, and a second copy of 5 of them (duplicates).
    envelopes = [
        make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=f"agg-{i}", producer="test") for i in range(30)
    ]
    envelopes.insert(15, make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id="poison", producer="test"))
    envelopes += envelopes[:5]
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
        handler=apply,
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
    await pool.close()
    assert {r["aggregate_id"]: r["n"] for r in rows} == {f"agg-{i}": 1 for i in range(30)}
    assert [r["error"] for r in dead] == ["POISON: this record can never be applied"]
    assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (30, 5, 1)
