"""The validator process: its parts composed, loaded from the database and run until stopped.

Each part owns its state and runs one loop (all bounded, all stop with `stop`):
- coordination (`coordination.Coordinator`): executes ledger.tx.v1 into blocks; signs, announces and
  stores each block;
- finality votes (`finality.FinalityVotes`): reads ledger.signatures.v1, counts votes, finalizes blocks
  at quorum and stores the signatures with the finality they complete;
- result publishing (`publishing.ResultPublisher`): f + 1 validators per chain publish the results of
  its final blocks, then mark them published;
- time cutting (`time_cuts.TimeCutter`): writes time-to-cut markers for chains with pending transactions.
What one part has announced and the database does not hold yet is tracked by `pending_writes`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.consumer import watch_lag
from fapiao_runtime.ledger_client import topic_partitions
from fapiao_runtime.topics import LEDGER_RESULTS, LEDGER_SIGNATURES, LEDGER_TRANSACTIONS

from ledger import store
from ledger.chain import ChainExecutor
from ledger.coordination import FETCH_MAX_RECORDS, Coordinator
from ledger.finality import FinalityVotes
from ledger.pending_writes import PendingWrites
from ledger.publishing import ResultPublisher
from ledger.settings import LedgerSettings
from ledger.time_cuts import TimeCutter
from ledger.traces import TraceBook

DRAIN_S = 5.0  # once stopped, how long the transaction loop may take to store the batch in hand


async def run_loops(loops: Sequence[Coroutine[Any, Any, None]], stop: asyncio.Event, drain_s: float = DRAIN_S) -> None:
    """Run `loops` until `stop`. A loop that fails (a lost broker or database) ends the run with its
    exception, the others cancelled, rather than leaving the validator up without finality or results;
    one that ends before `stop` is set is a defect (RuntimeError). Once stopped, the first loop gets
    `drain_s` to finish what it holds before all are cancelled."""
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if not stop.is_set():
            raise RuntimeError("a validator loop ended before the validator was stopped")
        await asyncio.wait(tasks[:1], timeout=drain_s)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Validator:
    """One validator: its parts over one database pool and one producer. `loaded` is set once the
    chains are loaded from the database (reads can be answered), `caught_up` once the transaction log
    was read to its end, `block_event` whenever a block is stored or becomes final (StreamBlocks)."""

    def __init__(
        self, runtime: RuntimeConfig, settings: LedgerSettings, pool: asyncpg.Pool, producer: AIOKafkaProducer
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.loaded = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.block_event = asyncio.Event()
        self._tx_topic = runtime.topic(LEDGER_TRANSACTIONS.name)
        self._sig_topic = runtime.topic(LEDGER_SIGNATURES.name)
        self._results_topic = runtime.topic(LEDGER_RESULTS.name)
        self._runs = 0
        self._build()

    def _build(self) -> None:
        """New parts with nothing in memory: `run` rebuilds their state from the database and the topics,
        exactly as a restarted process does (so a run that lost its database or broker can start over)."""
        self.loaded.clear()
        self.caught_up.clear()
        self.pending = PendingWrites()
        self.traces = TraceBook()
        self.chains: dict[int, ChainExecutor] = {}
        self.time_cuts = TimeCutter(self.settings, self.producer, self._tx_topic, self.chains)
        self.publisher = ResultPublisher(
            self.settings,
            self.pool,
            self.producer,
            self._results_topic,
            self.pending,
            on_published=lambda keys: self.finality.release_votes(keys),
            traces=self.traces,
        )
        self.finality = FinalityVotes(
            self.settings, self.pool, self.chains, self.pending, self.publisher.enqueue, self.block_event
        )
        self.coordination = Coordinator(
            self.settings,
            self.pool,
            self.producer,
            self._sig_topic,
            self.chains,
            self.finality,
            self.publisher,
            self.time_cuts,
            self.pending,
            self.traces,
        )

    def has_chain(self, chain_id: int) -> bool:
        return chain_id in self.chains

    async def wait_pending_writes(self, timeout_s: float = 2.0) -> bool:
        """See `PendingWrites.wait_settled`: for reads that miss what this validator signed or finalized."""
        return await self.pending.wait_settled(timeout_s)

    async def load(self, partitions: list[int]) -> dict[int, int]:
        """Load every part's state from the database; return the log position each chain resumes at."""
        async with self.pool.acquire() as conn:
            positions = await self.coordination.load(conn, partitions)
            next_heights = {chain_id: chain.height for chain_id, chain in self.chains.items()}
            self.publisher.enqueue(await self.finality.load(conn, next_heights, self.publisher.publishes))
            unfinal = await store.unfinal_own_signatures(conn, self.settings.validator_id)
        # Re-publish our signatures of blocks not final yet: we may have crashed before sending them.
        for own in unfinal:
            await self.coordination.send_signature(own.chain_id, own.height, own.header, own.signature)
        return positions

    async def run(self, stop: asyncio.Event) -> None:
        """Load the chains from the database, then run the parts' loops until `stop` (`run_loops`).

        Run again (after a lost database or broker: `service.Task`), it starts over from what is
        durable, as a restarted process would: the parts are built anew, the chains reloaded from the
        database, the transaction log read again from the stored positions and the signature topic from
        its stored replay point, so no transaction is skipped and no height is signed twice with
        different headers.
        """
        if self._runs:
            self._build()
        self._runs += 1
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.runtime.kafka_bootstrap,
            group_id=None,
            client_id=f"{self.settings.validator_id}-tx",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=FETCH_MAX_RECORDS,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        lag = watch_lag(f"{self.settings.validator_id}-tx", lambda: consumer)
        try:
            partitions = await topic_partitions(consumer, self._tx_topic, timeout_s=30.0)
            self.publisher.set_partitions(len(await topic_partitions(consumer, self._results_topic, timeout_s=30.0)))
            positions = await self.load(partitions)
            self.loaded.set()
            tps = {p: TopicPartition(self._tx_topic, p) for p in partitions}
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                consumer.seek(tp, positions[p])
            try:
                await run_loops(
                    [
                        self.coordination.run(consumer, tps, self.caught_up, stop),
                        self.finality.run(self.runtime.kafka_bootstrap, self._sig_topic, stop),
                        self.publisher.run(stop),
                        self.time_cuts.run(stop),
                    ],
                    stop,
                )
            finally:
                if self.publisher.has_unmarked:  # a clean stop leaves nothing to republish
                    with contextlib.suppress(Exception):
                        await self.publisher.mark_published()
        finally:
            lag.close()
            with contextlib.suppress(Exception):
                await consumer.stop()
