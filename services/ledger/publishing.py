"""Result publishing: the TransactionResults of final blocks go to ledger.results.v1.

f + 1 validators per chain publish (at least once; consumers deduplicate on the shared event id), then
mark the block published, so a restart republishes only what may not have gone out.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import zlib
from collections.abc import Callable, Iterable

import asyncpg
from aiokafka import AIOKafkaProducer
from fapiao_runtime.ledger_client import result_event_id
from google.protobuf.timestamp_pb2 import Timestamp

from ledger import store
from ledger.chain import CutBlock, claims_id
from ledger.pending_writes import BlockKey, PendingWrites
from ledger.records import result_envelope
from ledger.settings import LedgerSettings
from ledger.state_machine import DUPLICATE_TRANSACTION
from ledger.traces import TraceBook

PUBLISH_BATCH = 100
MARK_PUBLISHED_BATCH = 100

# Per transaction of a block, in block order: (duplicate, claims its id, transaction id, result bytes).
BlockResults = list[tuple[bool, bool, str, bytes]]


def result_publishers(validator_ids: list[str], chain_id: int) -> set[str]:
    """The f + 1 validators that publish the results of `chain_id`: ranks chain_id mod n onwards.

    With at most f faulty validators at least one of them is up, and every consumer reads f + 1
    copies of a result instead of n (all copies share one event id).
    """
    ordered = sorted(validator_ids)
    n = len(ordered)
    publishers = min(n, (n - 1) // 3 + 1)
    return {ordered[(chain_id + k) % n] for k in range(publishers)}


def block_results(block: CutBlock) -> BlockResults:
    """The results of a block just cut, as `ResultPublisher` publishes them (no database read)."""
    return [
        (o.result.rejection_reason == DUPLICATE_TRANSACTION, claims_id(o), o.transaction_id, r)
        for o, r in zip(block.outcomes, block.results, strict=True)
    ]


class ResultPublisher:
    """Owns the queue of final blocks whose results go out, the results of blocks cut by this run (so
    publishing them needs no read), and the published blocks not yet marked so in the database.

    `on_published` is told the blocks whose results were handled (published, or not ours to publish).
    """

    def __init__(
        self,
        settings: LedgerSettings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        results_topic: str,
        pending: PendingWrites,
        on_published: Callable[[list[BlockKey]], None],
        traces: TraceBook,
    ) -> None:
        self._settings = settings
        self._traces = traces
        self._pool = pool
        self._producer = producer
        self._topic = results_topic
        self._pending = pending
        self._on_published = on_published
        self._partitions = 1
        self._publishes: dict[int, bool] = {}
        self._results: dict[BlockKey, BlockResults] = {}
        self._queue: asyncio.Queue[BlockKey] = asyncio.Queue()
        self._unmarked: list[BlockKey] = []  # published, not yet marked published

    def set_partitions(self, partitions: int) -> None:
        """The results topic's partition count (results are keyed by transaction id)."""
        self._partitions = partitions

    def publishes(self, chain_id: int) -> bool:
        """Whether this validator is one of the result publishers of `chain_id` (`result_publishers`)."""
        publishes = self._publishes.get(chain_id)
        if publishes is None:
            publishers = result_publishers(sorted(self._settings.validator_keys), chain_id)
            publishes = self._publishes[chain_id] = self._settings.validator_id in publishers
        return publishes

    def hold_results(self, key: BlockKey, results: BlockResults) -> None:
        """Keep the results of a block this run cut until it is final (`enqueue`)."""
        self._results[key] = results

    def enqueue(self, keys: Iterable[BlockKey]) -> None:
        """Final blocks: their results go out (only the chain's result publishers send them)."""
        for key in keys:
            self._queue.put_nowait(key)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._unmarked:
                # Published blocks are marked in batches: at most mark_published_ms after the last.
                try:
                    first = await asyncio.wait_for(self._queue.get(), timeout=self._settings.mark_published_ms / 1000)
                except TimeoutError:
                    await self.mark_published()
                    continue
            else:
                first = await self._queue.get()
            keys = [first]
            while not self._queue.empty() and len(keys) < PUBLISH_BATCH:
                keys.append(self._queue.get_nowait())
            # Only the chain's result publishers publish and mark (results_published means nothing on
            # the others): no database round trip for the blocks of other chains.
            published = []
            for key in keys:
                results = self._results.pop(key, None)
                if self.publishes(key[0]):
                    published.append((key, results))
            await self._publish(published)
            self._on_published(keys)

    async def _publish(self, blocks: list[tuple[BlockKey, BlockResults | None]]) -> None:
        if not blocks:
            return
        futures = []
        occurred_at = Timestamp()
        occurred_at.GetCurrentTime()
        async with contextlib.AsyncExitStack() as stack:
            conn: asyncpg.Connection | None = None  # acquired only if a block's results must be read

            async def connection() -> asyncpg.Connection:
                nonlocal conn
                if conn is None:
                    conn = await stack.enter_async_context(self._pool.acquire())
                return conn

            for key, results in blocks:
                if results is None:
                    results = await store.block_results(await connection(), *key)
                for index, (duplicate, claims, transaction_id, raw) in enumerate(results):
                    if not transaction_id:
                        continue  # undecodable record: nobody awaits it
                    event_id = result_event_id(transaction_id)
                    if not claims:
                        # Rejected before its signature was verified (possibly forged): published under
                        # its own event id, so it can never shadow the genuine transaction's result.
                        event_id = uuid.uuid5(event_id, f"unverified:{key[0]}:{key[1]}:{index}")
                    elif duplicate:
                        # A retried submission learns the original outcome (same event id).
                        original = await store.original_final_result(await connection(), transaction_id)
                        if original is None:
                            continue
                        raw = original
                    futures.append(await self._send(transaction_id, event_id, raw, occurred_at))
        await asyncio.gather(*futures)
        # Marked in batches: a crash before the mark republishes those results, which consumers
        # deduplicate (same event ids); it saves a write per block.
        self._unmarked += [key for key, _ in blocks]
        if len(self._unmarked) >= MARK_PUBLISHED_BATCH:
            await self.mark_published()

    async def mark_published(self) -> None:
        """Mark the blocks published so far (a clean stop calls it: nothing to republish at restart)."""
        # A block whose results went out before its row was stored is marked in a later round.
        keys = [key for key in self._unmarked if not self._pending.is_unstored(key)]
        self._unmarked = [key for key in self._unmarked if self._pending.is_unstored(key)]
        if not keys:
            return
        async with self._pool.acquire() as conn:
            await store.mark_published(conn, keys)

    async def _send(
        self, transaction_id: str, event_id: uuid.UUID, raw: bytes, occurred_at: Timestamp
    ) -> asyncio.Future[object]:
        envelope = result_envelope(
            self._settings.validator_id,
            transaction_id,
            event_id,
            raw,
            occurred_at,
            self._traces.child_of(transaction_id),
        )
        key = transaction_id.encode()
        # Explicit partition (C crc32): aiokafka's pure-Python murmur2 costs more than the rest of the send.
        partition = zlib.crc32(key) % self._partitions
        future: asyncio.Future[object] = await self._producer.send(
            self._topic, value=envelope.SerializeToString(), key=key, partition=partition
        )
        return future

    @property
    def has_unmarked(self) -> bool:
        return bool(self._unmarked)
