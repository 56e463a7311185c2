"""Coordination: the ordered log executed into blocks, each block signed, announced and stored.

Reads every partition of ledger.tx.v1 (one chain each) from the stored chain positions, feeds each
chain's executor, and for each cut block signs the header, publishes its BlockSignature, then stores
everything in one database transaction (`Coordinator.commit` says why this order is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime import tracing

from ledger import store
from ledger.chain import ChainExecutor, CutBlock, claims_id
from ledger.finality import Divergence, FinalityVotes
from ledger.invariants import InvariantViolation
from ledger.metrics import HEIGHT, count_block
from ledger.pending_writes import BlockKey, PendingWrites
from ledger.presence import PresenceFilter
from ledger.publishing import ResultPublisher, block_results
from ledger.records import LogRecord, decode_record, signature_envelope
from ledger.settings import LedgerSettings
from ledger.state_machine import Outcome
from ledger.time_cuts import TimeCutter
from ledger.traces import TraceBook

FETCH_MAX_RECORDS = 5000

log = logging.getLogger("ledger.coordination")


class Coordinator:
    """Owns the chains (their executors, fed in log order), the ids the database may hold, and each
    chain's stored head, which every block it stores must extend."""

    def __init__(
        self,
        settings: LedgerSettings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        signatures_topic: str,
        chains: dict[int, ChainExecutor],
        finality: FinalityVotes,
        publisher: ResultPublisher,
        time_cuts: TimeCutter,
        pending: PendingWrites,
        traces: TraceBook,
    ) -> None:
        self._settings = settings
        self._traces = traces
        self._pool = pool
        self._producer = producer
        self._signatures_topic = signatures_topic
        self.chains = chains
        self._finality = finality
        self._publisher = publisher
        self._time_cuts = time_cuts
        self._pending = pending
        # Ids the database may hold (filled by `load`): ids outside them need no preload query. Until
        # `load`, nothing is stored: filters of the smallest working size (a tiny one would answer "maybe"
        # for new ids and send them to the database).
        self._stored_invoices = PresenceFilter.for_stored(0)
        self._claimed_ids = PresenceFilter.for_stored(0)
        self._heads: dict[int, tuple[int, bytes]] = {}  # chain -> (last height stored or signed, its hash)

    async def load(self, conn: asyncpg.Connection, partitions: list[int]) -> dict[int, int]:
        """Build each chain's executor from its stored tip and key registry; return the log position
        each chain resumes at. Raises RuntimeError if the partition count changed since the first start."""
        await store.pin_chain_count(conn, len(partitions))
        positions = {}
        for chain_id in partitions:
            tip = await store.chain_tip(conn, chain_id)
            keys, registration_ids = await store.load_registry(conn, chain_id)
            self.chains[chain_id] = ChainExecutor(
                chain_id=chain_id,
                height=tip.next_height,
                previous_hash=tip.previous_hash,
                max_txs=self._settings.max_txs,
                authorities=self._settings.authority_keys,
                chains=len(partitions),
                keys=keys,
                registration_ids=registration_ids,
            )
            self._heads[chain_id] = (tip.next_height - 1, tip.previous_hash)
            positions[chain_id] = tip.next_offset
            HEIGHT.labels(chain=str(chain_id)).set(tip.next_height - 1)
        self._stored_invoices, self._claimed_ids = await store.load_presence(conn)
        return positions

    async def run(
        self,
        consumer: AIOKafkaConsumer,
        tps: Mapping[int, TopicPartition],
        caught_up: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Execute the transaction log from `consumer` (assigned `tps`, one per chain) until `stop`;
        set `caught_up` once it was read to its end."""
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX_RECORDS)
            blocks: list[CutBlock] = []
            for tp, records in batch.items():
                blocks += await self.apply_batch(
                    self.chains[tp.partition], [decode_record(r.offset, r.value) for r in records]
                )
            if blocks:
                if not self._finality.replayed.is_set():
                    await self._finality.replayed.wait()
                await self.commit(blocks)
            if not batch and not caught_up.is_set():
                ends = await consumer.end_offsets(list(tps.values()))
                positions = [await consumer.position(tp) for tp in tps.values()]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps.values(), strict=True)):
                    caught_up.set()

    async def apply_batch(self, chain: ChainExecutor, records: list[LogRecord]) -> list[CutBlock]:
        """Execute a fetched batch of one chain; return the blocks it completed (not yet stored)."""
        chain.bound_caches()
        invoice_ids = {r.aggregate_id for r in records if r.kind == "tx" and r.aggregate_id}
        tx_ids = {r.tx.body.transaction_id for r in records if r.tx is not None and r.tx.body is not None}
        missing_invoices = chain.missing_invoices(invoice_ids)
        missing_txs = chain.missing_transactions(tx_ids)
        # Bodies name their own invoice; preload it too so a mismatching body can be judged.
        missing_invoices += chain.missing_invoices(
            {r.tx.body.invoice_id for r in records if r.tx is not None and r.tx.body is not None} - invoice_ids
        )
        if missing_invoices or missing_txs:
            # Only ids the database may hold are looked up; the others are certainly new.
            states: dict[str, bytes | None] = dict.fromkeys(missing_invoices)
            claimed: set[str] = set()
            lookup_invoices = [i for i in missing_invoices if i in self._stored_invoices]
            lookup_txs = [t for t in missing_txs if t in self._claimed_ids]
            if lookup_invoices or lookup_txs:
                async with self._pool.acquire() as conn:
                    found, claimed = await store.fetch_preload(conn, chain.chain_id, lookup_invoices, lookup_txs)
                states.update(found)
            chain.preload(states, missing_txs, claimed)
        blocks = []
        for record in records:
            block = None
            if record.kind == "tx":
                assert record.tx is not None
                if not chain.has_pending:
                    self._time_cuts.note_pending(chain.chain_id)
                if record.traceparent and record.tx.body is not None:
                    self._traces.note(record.tx.body.transaction_id, record.traceparent)
                block = chain.on_transaction(record.offset, record.aggregate_id, record.tx)
            elif record.kind == "cut":
                assert record.marker is not None
                if chain.chain_id == 0:
                    self._time_cuts.on_chain0_marker(record.marker, chain.height, record.producer)
                block = chain.on_time_to_cut(record.offset, record.marker)
            elif record.kind == "key":
                assert record.registration is not None
                chain.on_registration(record.offset, record.registration)
            if block is not None:
                blocks.append(block)
                self._time_cuts.note_cut(chain.chain_id)
                # From the cut on, the block's ids count as stored (its commit follows in this round).
                for invoice_id in block.states:
                    self._stored_invoices.add(invoice_id)
                for outcome in block.outcomes:
                    if claims_id(outcome):
                        self._claimed_ids.add(outcome.transaction_id)
                    if not outcome.result.accepted:
                        self._log_rejection(block, outcome)
                if chain.has_pending:
                    self._time_cuts.note_pending(chain.chain_id)
        return blocks

    def _log_rejection(self, block: CutBlock, outcome: Outcome) -> None:
        """One line per rejected transaction, in the trace of the request that submitted it."""
        traceparent = self._traces.of(outcome.transaction_id)
        with tracing.continued_from(traceparent) if traceparent else contextlib.nullcontext():
            log.info(
                "transaction rejected",
                extra={
                    "transaction_id": outcome.transaction_id,
                    "invoice_id": outcome.result.invoice_id,
                    "reason": outcome.result.rejection_reason,
                    "chain_id": block.chain_id,
                    "height": block.height,
                },
            )

    def _extend_heads(self, blocks: list[CutBlock]) -> None:
        """Each block must extend its chain: the next height, over the hash of the block before it."""
        for block in blocks:
            height, head = self._heads[block.chain_id]
            if block.height != height + 1 or block.header.previous_header_hash != head:
                raise InvariantViolation(
                    f"chain {block.chain_id}: block {block.height} does not extend the chain's head (height {height})"
                )
            self._heads[block.chain_id] = (block.height, block.header_hash)

    async def commit(self, blocks: list[CutBlock]) -> None:
        """Sign, publish the signatures, then store the blocks (one DB transaction for the batch).

        The signatures go out before the blocks are stored, so the other validators can reach a quorum
        while this one writes (under load the store is its slowest step). That is safe because a block
        is a function of the log: a validator that crashes before its store replays the same log into
        the same headers, and before it signs anything after a restart it reads its own signatures back
        from the topic (`FinalityVotes.check_first_headers`), so it still never signs a second header
        for a height. Finality of these blocks is stored only once they are (`PendingWrites`).
        """
        await self._finality.check_first_headers(
            [((block.chain_id, block.height), block.header_hash) for block in blocks]
        )
        self._extend_heads(blocks)
        signed = []
        for block in blocks:
            signature = self._settings.signing_key.sign(block.header_bytes)
            signed.append(
                (
                    block,
                    ledger_pb2.BlockSignature(
                        chain_id=block.chain_id,
                        height=block.height,
                        header_hash=block.header_hash,
                        validator_id=self._settings.validator_id,
                        signature=signature,
                    ),
                )
            )
        keys: list[BlockKey] = []
        diverging: list[Divergence] = []
        for block, own in signed:
            key = (block.chain_id, block.height)
            keys.append(key)
            diverging += self._finality.block_signed(key, block.header_hash)
            self._publisher.hold_results(key, block_results(block))
            self._pending.signing(key)
            await self.send_signature(block.chain_id, block.height, block.header_bytes, own.signature.signature)
        await store.commit_blocks(self._pool, signed, self._settings.validator_id)
        await self._pending.stored(keys)
        for block, _ in signed:
            count_block(block.chain_id, block.height, block.outcomes)
        await self._finality.blocks_stored(keys, {block.chain_id: block.height for block, _ in signed}, diverging)

    async def send_signature(self, chain_id: int, height: int, header: bytes, signature: bytes) -> None:
        """Publish our signature of a block's header on the signature topic."""
        envelope = signature_envelope(self._settings.validator_id, chain_id, height, header, signature)
        # Not awaited: the producer is idempotent and ordered; a lost signature is re-sent on restart.
        await self._producer.send(
            self._signatures_topic, value=envelope.SerializeToString(), key=envelope.aggregate_id.encode()
        )
