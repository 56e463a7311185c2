"""Killing the outbox relay or a consumer mid-stream loses no event and applies none twice."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import asyncpg
import pytest
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope, outgoing
from fapiao_runtime.outbox import enqueue, unsent
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import spawn, stop_pid

pytestmark = pytest.mark.integration

EVENTS = 600


def _start(stack: StackUnderTest, role: str, n: int):  # type: ignore[no-untyped-def]
    return spawn(
        [sys.executable, "-m", "tests.support.outbox_worker", role],
        log_file=stack.tmp_path / f"{role}-{n}.log",
        env=stack.env(),
    )


def _kill(proc) -> None:  # type: ignore[no-untyped-def]
    stop_pid(proc.pid, timeout_s=0.1, sig=signal.SIGKILL)
    proc.wait()


async def _seed_outbox(stack: StackUnderTest) -> set[str]:
    pool = await create_pool(stack.database_url, "producer_side")
    await apply_migrations(pool, "producer_side", None)
    ids = set()
    async with pool.acquire() as conn, conn.transaction():
        events = []
        for i in range(EVENTS):
            payload = payments_pb2.PaymentSucceeded(
                payment=payments_pb2.Payment(payment_id=f"p{i}", amount_fen=100 + i)
            )
            envelope = make_envelope(payload, aggregate_id=f"m1:order-{i}", producer="test")
            ids.add(envelope.event_id)
            events.append(outgoing(PAYMENTS.name, envelope))
        await enqueue(conn, events)
    await pool.close()
    return ids


async def _wait_until(predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not reached")


async def test_relay_and_consumer_killed_mid_stream_lose_nothing_and_apply_nothing_twice(
    stack: StackUnderTest,
) -> None:
    expected_ids = await _seed_outbox(stack)
    conn = await asyncpg.connect(stack.database_url)
    try:

        async def unsent() -> int:
            return int(await conn.fetchval("SELECT count(*) FROM producer_side.outbox WHERE sent_at IS NULL"))

        # Kill the relay three times while it is part-way through the outbox.
        for attempt in range(3):
            relay = _start(stack, "relay", attempt)
            before = await unsent()
            await _wait_until(lambda b=before: _fewer(unsent, b), 30)
            _kill(relay)
        relay = _start(stack, "relay", 99)

        # Meanwhile the consumer is killed several times mid-stream.
        for attempt in range(3):
            consumer = _start(stack, "consume", attempt)
            await asyncio.sleep(1.5 + attempt)
            _kill(consumer)
        consumer = _start(stack, "consume", 99)

        await _wait_until(lambda: _is_zero(unsent), 60)

        async def all_applied() -> bool:
            try:
                return int(await conn.fetchval("SELECT count(DISTINCT event_id) FROM consumer_side.effects")) >= EVENTS
            except asyncpg.UndefinedTableError:
                return False

        await _wait_until(all_applied, 90)
        await asyncio.sleep(1.0)  # let any duplicate deliveries arrive
        _kill(relay)
        _kill(consumer)

        rows = await conn.fetch("SELECT event_id::text AS id, count(*) AS n FROM consumer_side.effects GROUP BY 1")
        applied = {r["id"]: r["n"] for r in rows}
        assert set(applied) == expected_ids, "every committed event is applied"
        assert max(applied.values()) == 1, "no event is applied twice"
    finally:
        await conn.close()

    on_topic = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=EVENTS, timeout_s=20)
    assert {e.event_id for e in on_topic} == expected_ids, "the topic holds every event (duplicates allowed)"


async def _fewer(count, before: int) -> bool:  # type: ignore[no-untyped-def]
    now = await count()
    return (now < before and now > 0) or now == 0


async def _is_zero(count) -> bool:  # type: ignore[no-untyped-def]
    return await count() == 0


async def test_unsent_counts_the_events_kafka_has_not_taken_yet(stack: StackUnderTest) -> None:
    pool = await create_pool(stack.database_url, "unsent_side")
    await apply_migrations(pool, "unsent_side", None)
    try:
        events = [
            outgoing(PAYMENTS.name, make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=f"p-{i}", producer="t"))
            for i in range(3)
        ]
        async with pool.acquire() as conn:
            async with conn.transaction():
                await enqueue(conn, events)
            ids = [str(e.event_id) for e in events]
            assert await unsent(conn, ids) == 3
            await conn.execute("UPDATE outbox SET sent_at = now() WHERE event_id = $1::uuid", ids[0])
            assert await unsent(conn, ids) == 2
            assert await unsent(conn, [ids[0]]) == 0
    finally:
        await pool.close()
