"""Physical baselines that every other figure is compared with in the same run.

kafka_roundtrip_msgs_per_s: 1 KB messages produced (idempotent, acks=all) and consumed on the local
broker, from the first send to the last message read. ed25519_verify_per_s: signature verifications per
second with `cryptography` (OpenSSL) on one core; ed25519_verify_libsodium_per_s: the same through
`ledger_trust.ed25519_verify`, the check every Fapiao service and validator runs.
"""

from __future__ import annotations

import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.ledger_trust import ed25519_verify
from fapiao_stack.harness import StackUnderTest

MESSAGES = 100_000
MESSAGE_BYTES = 1024
PARTITIONS = 4


async def kafka_roundtrip(env: StackUnderTest) -> dict[str, float]:
    topic = env.topic("bench.roundtrip")
    admin = AIOKafkaAdminClient(bootstrap_servers=env.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=env.kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    producer = new_producer(env.kafka_bootstrap, client_id="bench", linger_ms=5)
    await producer.start()
    payload = os.urandom(MESSAGE_BYTES)

    async def produce() -> float:
        started = time.perf_counter()
        pending = []
        for i in range(MESSAGES):
            pending.append(await producer.send(topic, payload, key=str(i % 64).encode()))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return time.perf_counter() - started

    async def consume() -> float:
        seen = 0
        while seen < MESSAGES:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter()

    started = time.perf_counter()
    try:
        consumer_task = asyncio.ensure_future(consume())
        produce_s = await produce()
        finished = await asyncio.wait_for(consumer_task, timeout=120)
    finally:
        await producer.stop()
        await consumer.stop()
    return {
        "kafka_roundtrip_msgs_per_s": MESSAGES / (finished - started),
        "kafka_produce_msgs_per_s": MESSAGES / produce_s,
    }


def ed25519_verify_rate(duration_s: float = 3.0, *, libsodium: bool = False) -> float:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(200)
    signature = key.sign(message)
    done = 0
    started = time.perf_counter()
    deadline = started + duration_s
    while time.perf_counter() < deadline:
        for _ in range(500):
            if libsodium:
                assert ed25519_verify(public, signature, message)
            else:
                public.verify(signature, message)
        done += 500
    return done / (time.perf_counter() - started)


async def run(env: StackUnderTest) -> dict[str, float]:
    figures = await kafka_roundtrip(env)
    figures["ed25519_verify_per_s"] = ed25519_verify_rate()
    figures["ed25519_verify_libsodium_per_s"] = ed25519_verify_rate(libsodium=True)
    return figures
