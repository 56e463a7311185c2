"""Warm the broker's JIT before anything is measured.

A freshly started JVM interprets Kafka's request paths until its compilers (C1, then C2) have compiled
the hot ones: meanwhile the compiler threads take a large share of a core and a hop through the broker
is several times slower than once compilation is done. A broker in service has long been compiled, so
the benchmark, which claims steady-state figures, measures that: before the first area it drives the
kinds of traffic the services make until the compiler threads go quiet: small records sent one by one
(idempotent producer without linger) to long-polling consumers, batched records (an outbox relay's
linger) read in large fetches, and a consumer group that commits its offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from fapiao_runtime.kafka import new_producer

from fapiao_bench.baselines import create_topic, kafka_hop_latency

CHUNK_S = 5.0
RATE_PER_S = 2_000
READERS = 3
BULK_RECORD_BYTES = 1024
BULK_BATCH = 500
QUIET_CPU_FRACTION = 0.05  # compiler CPU per second of wall time below which the JIT counts as done
MIN_CHUNKS = 3
MAX_S = 150.0


def compiler_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the JVM's JIT compiler threads (Linux /proc)."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            if not name.startswith(("C1 CompilerThre", "C2 CompilerThre")):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a compiler thread that ended
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100  # USER_HZ


async def _bulk(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """Batched records (linger 5 ms) read back by a consumer group that commits its offsets."""
    producer = new_producer(bootstrap, client_id="bench-warmup", linger_ms=5)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-warmup-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=200,
    )
    await producer.start()
    await consumer.start()
    payload = os.urandom(BULK_RECORD_BYTES)

    async def drain() -> None:
        while True:
            await consumer.getmany(timeout_ms=500, max_records=5_000)

    reader = asyncio.ensure_future(drain())
    try:
        while not stop.is_set():
            sends = [await producer.send(topic, payload, key=str(i).encode()) for i in range(BULK_BATCH)]
            await asyncio.gather(*sends)
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await producer.stop()
        await consumer.stop()


async def warm_up(broker_pid: int, bootstrap: str) -> dict[str, float]:
    """Drive the broker until its JIT is quiet (or MAX_S); returns how long that took."""
    run = uuid.uuid4().hex[:6]
    hop_topic, bulk_topic = f"bench.warmup.hop.{run}", f"bench.warmup.bulk.{run}"
    await create_topic(bootstrap, hop_topic, 4)
    await create_topic(bootstrap, bulk_topic, 4)
    stop = asyncio.Event()
    bulk = asyncio.ensure_future(_bulk(bootstrap, bulk_topic, stop))
    started = time.monotonic()
    chunks = 0
    try:
        while True:
            compiled_before, chunk_started = compiler_cpu_s(broker_pid), time.monotonic()
            await kafka_hop_latency(bootstrap, hop_topic, rate_per_s=RATE_PER_S, seconds=CHUNK_S, readers=READERS)
            chunks += 1
            fraction = (compiler_cpu_s(broker_pid) - compiled_before) / (time.monotonic() - chunk_started)
            elapsed = time.monotonic() - started
            if (chunks >= MIN_CHUNKS and fraction < QUIET_CPU_FRACTION) or elapsed > MAX_S:
                return {"kafka_warmup_s": elapsed, "kafka_warmup_last_compiler_cpu_fraction": fraction}
    finally:
        stop.set()
        await bulk
