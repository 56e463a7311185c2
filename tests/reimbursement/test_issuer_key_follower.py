"""The issuer-key follower's catch-up wait, against the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.issuer_keys import IssuerKeyFollower
from fapiao_runtime.ledger_client import SigningKey, key_registration_events
from fapiao_runtime.topics import LEDGER_TRANSACTIONS
from reimbursement.store import find_issuer_key, store_registration

from tests.reimbursement.conftest import MIGRATIONS
from tests.reimbursement.support import Issuer

pytestmark = pytest.mark.integration

BACKLOG = 20_000  # records ahead of the registration: several fetch windows of the follower


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, "reimbursement", max_size=4)
    await apply_migrations(pool, "reimbursement", MIGRATIONS)
    try:
        yield pool
    finally:
        await pool.close()


async def _publish_backlog_then_registration(bootstrap: str, topic: str, authority: SigningKey, issuer: Issuer) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        filler = os.urandom(200)  # not a ledger record: the follower reads past it
        sends = [
            await producer.send(topic, filler, partition=i % LEDGER_TRANSACTIONS.partitions) for i in range(BACKLOG)
        ]
        registration = issuer.registration(f"reg-{uuid.uuid4()}")
        for event in key_registration_events(authority, registration, LEDGER_TRANSACTIONS.partitions, "registry"):
            sends.append(await producer.send(topic, event.envelope_bytes, key=event.key, partition=event.partition))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def test_a_far_behind_follower_is_waited_for_until_it_has_stored_the_log(
    kafka_bootstrap: str, topic_prefix: str, pool: asyncpg.Pool
) -> None:
    topic = f"{topic_prefix}{LEDGER_TRANSACTIONS.name}"
    authority, issuer = SigningKey.generate("authority"), Issuer()
    await _publish_backlog_then_registration(kafka_bootstrap, topic, authority, issuer)
    recorder = IssuerKeyFollower(
        kafka_bootstrap,
        topic,
        f"{topic_prefix}follower",
        lambda registration: store_registration(pool, registration),
        {authority.key_id: authority.public_key},
    )
    assert not await recorder.caught_up(timeout_s=0.2), "a follower that is not running cannot tell"
    stop = asyncio.Event()
    running = asyncio.ensure_future(recorder.run(stop))
    try:
        async with asyncio.timeout(60):
            while not recorder.assigned:
                await asyncio.sleep(0.05)
        # It starts BACKLOG records behind the registration: the wait ends only once it is stored.
        assert await find_issuer_key(pool, issuer.key.key_id) is None
        assert await recorder.caught_up(timeout_s=60)
        assert await find_issuer_key(pool, issuer.key.key_id) is not None
        assert recorder.stored == LEDGER_TRANSACTIONS.partitions
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)
