"""Physical baselines that every other figure is compared with in the same run.

kafka_roundtrip_msgs_per_s: 1 KB messages produced (idempotent, acks=all) and consumed on the local
broker, from the first send to the last message read. kafka_hop_p50_ms / kafka_hop_p99_ms: the latency
of one hop through the broker, the floor of every hop in Fapiao: small records sent one by one at a
steady rate by an idempotent producer without linger, from just before the send to their arrival at a
consumer that long-polls, as the services' consumers do. ed25519_verify_per_s: signature verifications per
second with `cryptography` (OpenSSL) on one core; ed25519_verify_libsodium_per_s: the same with libsodium
(PyNaCl), for comparison with the ZIP 215 rule; ed25519_verify_fapiao_per_s: the same through
`ledger_trust.ed25519_verify` (ZIP 215 by ed25519-zebra, the key's check cached), the check every
Fapiao service and validator runs.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time

import nacl.bindings
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.ledger_client import consumer_at_end
from fapiao_runtime.ledger_trust import ed25519_verify
from fapiao_stack.harness import StackUnderTest

from fapiao_bench.stats import percentile

MESSAGES = 100_000
HOP_RATE_PER_S = 1_000
HOP_SECONDS = 10
HOP_RECORD_BYTES = 300
MESSAGE_BYTES = 1024
PARTITIONS = 4


async def kafka_roundtrip(env: StackUnderTest) -> dict[str, float]:
    topic = env.topic("bench.roundtrip")
    await create_topic(env.kafka_bootstrap, topic, PARTITIONS)
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


async def kafka_hop_latency(
    bootstrap: str, topic: str, *, rate_per_s: int = HOP_RATE_PER_S, seconds: float = HOP_SECONDS, readers: int = 1
) -> list[float]:
    """Latencies (ms) of small records sent one by one at `rate_per_s` to `topic` (which must exist),
    each read by `readers` consumers (every record is timed at the first); sends in 5 ms ticks."""
    consumers = [await consumer_at_end(bootstrap, topic) for _ in range(readers)]
    producer = new_producer(bootstrap, client_id="bench-hop", linger_ms=0)
    await producer.start()
    padding = os.urandom(HOP_RECORD_BYTES - 8)
    total = int(rate_per_s * seconds)
    latencies: list[float] = []

    async def read(consumer: AIOKafkaConsumer, timed: bool) -> None:
        seen = 0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in batch.values():
                seen += len(records)
                if timed:
                    latencies.extend((now - struct.unpack("<d", r.value[:8])[0]) * 1000 for r in records)

    readers_done = asyncio.gather(*(read(c, i == 0) for i, c in enumerate(consumers)))
    try:
        per_tick = max(1, rate_per_s // 200)
        begin = time.perf_counter()
        sends = []
        for n in range(0, total, per_tick):
            delay = begin + n / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for i in range(n, min(total, n + per_tick)):
                value = struct.pack("<d", time.perf_counter()) + padding
                sends.append(await producer.send(topic, value, key=str(i % 64).encode()))
        await asyncio.gather(*sends)
        await asyncio.wait_for(readers_done, timeout=60)
    finally:
        readers_done.cancel()
        await producer.stop()
        for consumer in consumers:
            await consumer.stop()
    return latencies


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def ed25519_verify_rate(duration_s: float = 3.0, *, how: str = "openssl") -> float:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes_raw()
    message = os.urandom(200)
    signature = key.sign(message)

    if how not in ("openssl", "libsodium", "fapiao"):
        raise ValueError(f"unknown verifier {how!r}")

    def check() -> None:
        if how == "openssl":
            public.verify(signature, message)
        elif how == "libsodium":
            nacl.bindings.crypto_sign_open(signature + message, raw)
        elif not ed25519_verify(public, signature, message):
            raise AssertionError("a valid signature did not verify")

    done = 0
    started = time.perf_counter()
    deadline = started + duration_s
    while time.perf_counter() < deadline:
        for _ in range(500):
            check()
        done += 500
    return done / (time.perf_counter() - started)


async def run(env: StackUnderTest) -> dict[str, float]:
    figures = await kafka_roundtrip(env)
    topic = env.topic("bench.hop")
    await create_topic(env.kafka_bootstrap, topic, PARTITIONS)
    hops = await kafka_hop_latency(env.kafka_bootstrap, topic)
    figures["kafka_hop_p50_ms"] = percentile(hops, 0.5)
    figures["kafka_hop_p99_ms"] = percentile(hops, 0.99)
    figures["ed25519_verify_per_s"] = ed25519_verify_rate()
    figures["ed25519_verify_libsodium_per_s"] = ed25519_verify_rate(how="libsodium")
    figures["ed25519_verify_fapiao_per_s"] = ed25519_verify_rate(how="fapiao")
    return figures
