"""An idempotent consumer run as a service Task rides out a PostgreSQL killed with -9 mid-stream: it is run
again from the committed offsets once the database is back, applies every event exactly once and
dead-letters none (the real broker, a PostgreSQL server of the test's own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from fapiao.common.v1 import envelope_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.resilience import Backoff, keep_running
from fapiao_runtime.topics import PAYMENTS

from tests.support.outages import eventually, own_postgres

pytestmark = pytest.mark.integration

EVENTS = 400
EFFECTS = "consumer_side.effects"


async def _count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_a_consumer_rides_out_a_killed_postgres_and_applies_every_event_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    async with own_postgres(tmp_path) as postgres:
        pool = await create_pool(postgres.database_url, "consumer_side")
        await apply_migrations(pool, "consumer_side", None)
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE effects (event_id uuid, applied_at timestamptz DEFAULT now())")

        async def apply(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
            await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", envelope.event_id)
            await asyncio.sleep(0.002)  # a stream long enough for the kill to land in it

        async def database_down() -> str | None:
            try:
                await asyncio.wait_for(pool.fetchval("SELECT 1"), 3)
            except Exception:
                return "database"
            return None

        consumer = EventConsumer(
            bootstrap=kafka_bootstrap,
            topics=[f"{topic_prefix}{PAYMENTS.name}"],
            group_id="outage-consumer",
            pool=pool,
            handler=apply,
            max_batch=20,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(
            keep_running("consumer", lambda: consumer.run(stop), stop, backoff=Backoff(0.1, 1.0), lost=database_down)
        )
        producer = new_producer(kafka_bootstrap, client_id="outage-test")
        await producer.start()
        try:

            async def publish(first: int, count: int) -> None:
                for i in range(first, first + count):
                    envelope = make_envelope(
                        payments_pb2.PaymentSucceeded(payment=payments_pb2.Payment(payment_id=f"p{i}")),
                        aggregate_id=f"m1:o{i}",
                        producer="test",
                    )
                    await producer.send(f"{topic_prefix}{PAYMENTS.name}", envelope.SerializeToString(), key=b"m1")
                await producer.flush()

            await publish(0, EVENTS // 2)
            await eventually(
                lambda: _count(postgres.database_url, "SELECT count(*) > 20 FROM consumer_side.effects"),
                60,
                "the consumer under way",
                interval_s=0.05,
            )
            await asyncio.to_thread(postgres.kill)
            await publish(EVENTS // 2, EVENTS // 2)  # acknowledged by the broker while the database is down
            await asyncio.sleep(2)
            assert not task.done(), task.exception() if task.done() else None

            await asyncio.to_thread(postgres.start)
            await eventually(
                lambda: _count(
                    postgres.database_url, f"SELECT count(DISTINCT event_id) = {EVENTS} FROM consumer_side.effects"
                ),
                90,
                "every event applied",
            )
            assert await _count(postgres.database_url, "SELECT count(*) FROM consumer_side.effects") == EVENTS
            assert await _count(postgres.database_url, "SELECT count(*) FROM consumer_side.dead_letters") == 0
            assert consumer.dead_lettered == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await producer.stop()
            await pool.close()
