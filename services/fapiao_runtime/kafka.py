"""Kafka clients with the settings Fapiao relies on.

Producers: acks=all and idempotence on, so a retried send never duplicates or reorders within a
partition. Topics are created explicitly with their partition counts (auto-creation is not relied on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from fapiao_runtime.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024

# For consumers off any latency path (bookkeeping, registries): the broker answers a fetch once 64 KiB
# are waiting or after 200 ms. A trickle of records then costs a few fetches and offset commits per
# second instead of one of each per record, on the broker and in the consumer.
BATCHED_FETCH = {"fetch_min_bytes": 64 * 1024, "fetch_max_wait_ms": 200}


def new_producer(bootstrap: str, *, client_id: str, linger_ms: int = 2) -> AIOKafkaProducer:
    """An idempotent producer (acks=all, enable_idempotence=True). The caller starts and stops it.

    linger_ms: how long a send may wait for others to share its request. 2 ms suits outbox relays,
    whose rounds send many rows; validators use 0, where every record is a latency hop (markers,
    block signatures, results) and the sends made while a request is in flight form the next one
    anyway.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=30_000,
    )


async def ensure_topics(
    bootstrap: str, prefix: str = "", specs: Iterable[TopicSpec] = ALL_TOPICS, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet, with explicit partition counts and their settings
    (topics that exist are left as they are: see docs/runbook.md for the ledger's retention)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fapiao-admin")
    for attempt in range(30):
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                f"{prefix}{s.name}",
                num_partitions=s.partitions,
                replication_factor=replication_factor,
                topic_configs=dict(s.configs),
            )
            for s in specs
            if f"{prefix}{s.name}" not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
            log.info("topics created", extra={"topics": ",".join(t.name for t in wanted)})
    finally:
        await admin.close()
