"""fapiao_consumer_lag{topic, partition, group}: the end offset of each assigned partition minus the consumer's
position, for EventConsumers and for consumers that read Kafka themselves (watch_lag), dropped when the
consumer stops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fapiao.common.v1 import envelope_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.consumer import EventConsumer, report_consumer_lag, watch_lag
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.topics import MERCHANTS, PAYMENTS
from fapiao_stack.harness import StackUnderTest
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration


def _lag(topic: str, partition: int, group: str) -> float | None:
    labels = {"topic": topic, "partition": str(partition), "group": group}
    return REGISTRY.get_sample_value("fapiao_consumer_lag", labels)


async def _produce(stack: StackUnderTest, topic: str, count: int, partition: int) -> None:
    producer = new_producer(stack.kafka_bootstrap, client_id="lag-test")
    await producer.start()
    try:
        for i in range(count):
            envelope = make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=f"a{i}", producer="t")
            await producer.send(topic, envelope.SerializeToString(), key=b"k", partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


async def test_an_event_consumer_reports_its_lag_per_partition_until_it_stops(stack: StackUnderTest) -> None:
    topic, group = stack.topic(PAYMENTS.name), f"lag-{uuid.uuid4().hex[:6]}"
    await _produce(stack, topic, 5, partition=2)
    release = asyncio.Event()

    async def slow(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
        await release.wait()

    pool = await create_pool(stack.database_url, "lagging")
    try:
        await apply_migrations(pool, "lagging", None)
        consumer = EventConsumer(
            bootstrap=stack.kafka_bootstrap, topics=[topic], group_id=group, pool=pool, handler=slow, max_batch=1
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(consumer.run(stop))
        try:

            async def behind() -> bool:
                await report_consumer_lag()
                return _lag(topic, 2, group) == 4  # the first record is being applied; four wait

            await _until(behind)
            assert _lag(topic, 0, group) == 0  # every partition of the topic is assigned, empty ones too
            release.set()

            async def caught_up() -> bool:
                await report_consumer_lag()
                return _lag(topic, 2, group) == 0

            await _until(caught_up)
        finally:
            release.set()
            stop.set()
            await task
    finally:
        await pool.close()
    await report_consumer_lag()
    assert _lag(topic, 2, group) is None  # a stopped consumer's partitions leave the gauge


async def test_a_consumer_of_its_own_reports_its_lag_through_watch_lag(stack: StackUnderTest) -> None:
    """As a validator does: manual assignment, no consumer group."""
    topic = stack.topic(MERCHANTS.name)
    await _produce(stack, topic, 3, partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    watch = watch_lag("validator-x.tx", lambda: consumer)
    try:
        assert await report_consumer_lag() >= 3
        assert _lag(topic, 0, "validator-x.tx") == 3
        read = 0
        deadline = time.monotonic() + 30
        while read < 3 and time.monotonic() < deadline:
            read += sum(len(r) for r in (await consumer.getmany(timeout_ms=500)).values())
        await report_consumer_lag()
        assert _lag(topic, 0, "validator-x.tx") == 0
    finally:
        watch.close()
        await consumer.stop()
    await report_consumer_lag()
    assert _lag(topic, 0, "validator-x.tx") is None
