"""A worker process for crash tests of the outbox relay and the idempotent consumer.

python -m tests.support.outbox_worker relay    -> runs the outbox relay of schema `producer_side`
python -m tests.support.outbox_worker consume  -> applies every event once into table `effects`
Both read FAPIAO_KAFKA_BOOTSTRAP, DATABASE_URL and FAPIAO_TOPIC_PREFIX and run until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from fapiao.common.v1 import envelope_pb2
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.outbox import OutboxRelay
from fapiao_runtime.topics import PAYMENTS


async def relay() -> None:
    pool = await create_pool(os.environ["DATABASE_URL"], "producer_side")
    await apply_migrations(pool, "producer_side", None)
    producer = new_producer(os.environ["FAPIAO_KAFKA_BOOTSTRAP"], client_id="crash-relay")
    await producer.start()
    # Small batches so that a kill lands between publishing and marking rows sent.
    worker = OutboxRelay(
        pool, producer, schema="producer_side", topic_prefix=os.environ["FAPIAO_TOPIC_PREFIX"], batch_size=20
    )
    await worker.run(asyncio.Event())


async def consume() -> None:
    pool = await create_pool(os.environ["DATABASE_URL"], "consumer_side")
    await apply_migrations(pool, "consumer_side", None)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS effects"
            " (event_id uuid, aggregate_id text, applied_at timestamptz DEFAULT now())"
        )

    async def apply(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
        await conn.execute(
            "INSERT INTO effects (event_id, aggregate_id) VALUES ($1, $2)",
            envelope.event_id,
            envelope.aggregate_id,
        )
        await asyncio.sleep(0.002)  # widen the window in which a kill can land mid-batch

    consumer = EventConsumer(
        bootstrap=os.environ["FAPIAO_KAFKA_BOOTSTRAP"],
        topics=[os.environ["FAPIAO_TOPIC_PREFIX"] + PAYMENTS.name],
        group_id="crash-consumer",
        pool=pool,
        handler=apply,
        max_batch=50,
    )
    await consumer.run(asyncio.Event())


if __name__ == "__main__":
    configure_logging("crash-worker")
    asyncio.run(relay() if sys.argv[1] == "relay" else consume())
