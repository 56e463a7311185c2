"""The validator process: consume the ordered log, execute, cut, sign, finalize, publish results.

Tasks (all bounded, all stop with `stop`):
- transactions: reads every partition of ledger.tx.v1 from the stored chain positions, feeds each
  chain's executor, and for each cut block signs the header, publishes its BlockSignature, then
  stores everything in one DB transaction (`_commit` says why this order is safe).
- signatures: reads ledger.signatures.v1 from the start, verifies each signature over the header
  bytes it carries, reports divergent headers, and at quorum queues the block's results, then stores
  the signatures with the finality they complete.
- results: f + 1 validators per chain publish the TransactionResults of its final blocks (at least
  once; consumers deduplicate on the shared event id), then mark the block published.
- markers: writes TimeToCut markers for chains with pending transactions (`time_to_cut_due`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Collection, Mapping
from typing import NamedTuple

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.envelope import parse_envelope, unpack
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.ledger_client import result_event_id, topic_partitions
from fapiao_runtime.topics import LEDGER_RESULTS, LEDGER_SIGNATURES, LEDGER_TRANSACTIONS
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge

from ledger import store
from ledger.chain import ChainExecutor, CutBlock, claims_id
from ledger.presence import PresenceFilter
from ledger.records import (
    OWN_SIGNATURE,
    LogRecord,
    decode_record,
    marker_envelope,
    result_envelope,
    signature_envelope,
    verified_signature,
)
from ledger.replay import ReplayPoint
from ledger.settings import LedgerSettings
from ledger.state_machine import DUPLICATE_TRANSACTION

log = logging.getLogger(__name__)

BLOCKS_COMMITTED = Counter("fapiao_ledger_blocks_committed_total", "Blocks cut and stored", ["chain"])
BLOCKS_FINAL = Counter("fapiao_ledger_blocks_final_total", "Blocks final by quorum", ["chain"])
TRANSACTIONS = Counter("fapiao_ledger_transactions_total", "Transactions executed", ["accepted"])
DIVERGENCES = Counter("fapiao_ledger_divergences_total", "Validators whose header differed from ours", ["validator"])
EQUIVOCATIONS = Counter(
    "fapiao_ledger_equivocations_total", "Second, different headers a validator signed for one height", ["validator"]
)
HEIGHT = Gauge("fapiao_ledger_height", "Last stored block height", ["chain"])
TIME_CUTS_SENT = Counter(
    "fapiao_ledger_time_cuts_sent_total", "Time-to-cut markers sent, as the time cutter or standing in", ["role"]
)
TIME_CUTTER_CHANGES = Counter(
    "fapiao_ledger_time_cutter_changes_total", "Another validator took over the time cuts (read in chain 0's log)"
)

FETCH_MAX_RECORDS = 5000
HELD_SIGNATURES_LIMIT = 20_000
LATE_SIGNATURES_BATCH = 100
MARK_PUBLISHED_BATCH = 100
STAND_IN_MIN_S = 0.25
MARKER_RESEND_MIN_S = 1.0


class SignatureRecord(NamedTuple):
    """A verified signature and where it was read on the signature topic."""

    signature: ledger_pb2.BlockSignature
    partition: int
    offset: int


def result_publishers(validator_ids: list[str], chain_id: int) -> set[str]:
    """The f + 1 validators that publish the results of `chain_id`: ranks chain_id mod n onwards.

    With at most f faulty validators at least one of them is up, and every consumer reads f + 1
    copies of a result instead of n (all copies share one event id).
    """
    ordered = sorted(validator_ids)
    n = len(ordered)
    publishers = min(n, (n - 1) // 3 + 1)
    return {ordered[(chain_id + k) % n] for k in range(publishers)}


def time_to_cut_due(pending_since: float, last_cut: float | None, cut_s: float, cut_idle_s: float) -> float:
    """When the designated validator writes a chain's time-to-cut marker (monotonic seconds).

    Every block costs each validator a fixed amount of work, so under load time cuts come at most
    every cut_s (and a block cut by size restarts that wait). A chain whose previous cut is older than
    that is not under load: its first pending transaction waits only cut_idle_s for companions. Only
    the marker's timing changes, never what it means: every validator cuts where the marker sits in
    the log, so blocks stay identical on all of them.
    """
    due = pending_since + cut_idle_s
    if last_cut is not None:
        due = max(due, last_cut + cut_s)
    return due


def cut_interval_start(last_cut: float | None, last_marker: tuple[int, float] | None, height: int) -> float | None:
    """Where the wait for a chain's next time cut starts (the `last_cut` of `time_to_cut_due`).

    That is the chain's previous cut as this validator applied it, or, if earlier, when this validator
    sent its marker for the previous height (`last_marker` = (height, monotonic send time)). Counting
    from the send keeps time cuts `cut_s` apart even when a loaded validator reads its own marker back
    late: counted from the read, every block of a loaded chain would also wait that read-back lag.
    """
    if last_cut is not None and last_marker is not None and last_marker[0] == height - 1:
        return min(last_cut, last_marker[1])
    return last_cut


def takes_over_time_cuts(
    marker: ledger_pb2.TimeToCut, chain_height: int, producer: str, validators: Collection[str]
) -> bool:
    """Whether a marker read in chain 0's log makes its writer the time cutter.

    A validator's marker for chain 0's current height does, whether or not transactions are pending
    (one that cuts nothing is a stand-in's claim, `_markers_loop`); a stale one (for a height already
    cut) or one from a writer that is not a validator does not. Chain 0's log alone decides, since
    chains are not ordered with each other: every validator sees the same succession of time cutters.
    """
    return marker.height == chain_height and producer in validators


def chains_to_mark(due: Mapping[int, float], unmarked: set[int], now: float) -> list[int]:
    """The chains whose time-to-cut marker a validator sends now.

    `due`: when each chain with pending transactions is due (monotonic seconds); `unmarked`: those of
    them this validator has sent no marker for at their current height. Nothing is sent before one of
    them is due; then every unmarked pending chain is cut with it. So the chains' time cuts coincide:
    a validator that reads their markers in one fetch stores their blocks in one statement, sends
    their signatures in one request and finalizes them together, instead of paying each block's round
    on its own (the per-block work is most of a validator's CPU below saturation: docs/benchmarks.md).
    """
    if not any(when <= now for when in due.values()):
        return []
    return sorted({chain_id for chain_id, when in due.items() if when <= now} | (unmarked & due.keys()))


class Validator:
    def __init__(
        self, runtime: RuntimeConfig, config: LedgerSettings, pool: asyncpg.Pool, producer: AIOKafkaProducer
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.pool = pool
        self.producer = producer
        self.loaded = asyncio.Event()  # chains loaded from the database: reads can be answered
        self.caught_up = asyncio.Event()
        self.block_event = asyncio.Event()  # set when a block is stored or becomes final (StreamBlocks)
        self._tx_topic = runtime.topic(LEDGER_TRANSACTIONS.name)
        self._sig_topic = runtime.topic(LEDGER_SIGNATURES.name)
        self._results_topic = runtime.topic(LEDGER_RESULTS.name)
        self._runs = 0
        self._reset()

    def _reset(self) -> None:
        """Forget everything held in memory: `run` then rebuilds it from the database and the topics,
        exactly as a restarted process does (so a run that lost its database or broker can start over)."""
        self.loaded.clear()
        self.caught_up.clear()
        self.chains: dict[int, ChainExecutor] = {}
        self.own_hashes: dict[tuple[int, int], bytes] = {}
        self.votes: dict[tuple[int, int], dict[str, bytes]] = {}
        self.final: set[tuple[int, int]] = set()
        # Per chain: heights below this were dropped from own_hashes, final and votes (recent_heights).
        self.forgotten_below: dict[int, int] = {}
        self.pending_results: dict[tuple[int, int], list[tuple[bool, bool, str, bytes]]] = {}
        # Other validators' signatures are written with the finality they complete (one statement per
        # finalized batch, not one per arrival); see _on_signatures.
        self.held_signatures: dict[tuple[int, int], list[ledger_pb2.BlockSignature]] = {}
        self.late_signatures: list[ledger_pb2.BlockSignature] = []
        self._held = 0
        self._unmarked: list[tuple[int, int]] = []  # published, not yet marked published
        self.publish_queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self.pending_since: dict[int, float] = {}
        self.pending_started = asyncio.Event()  # a chain went from nothing pending to pending (markers)
        self.last_marker: dict[int, tuple[int, float]] = {}
        self.last_cut: dict[int, float] = {}  # when this validator last cut a block of the chain (any cause)
        # Blocks signed (and our signature sent) whose store has not completed yet, and blocks final
        # (results queued) whose finality is not stored yet; `_stored` is notified when either shrinks.
        self._unstored: set[tuple[int, int]] = set()
        self._unwritten_final: set[tuple[int, int]] = set()
        self._stored = asyncio.Condition()
        # Our own signatures found on the signature topic for blocks our database does not hold (it was
        # lost or restored from an older copy): we never sign another header for those heights. Blocks
        # are signed only once the topic has been read to its end as of start (`signatures_replayed`).
        # Those of blocks far ahead of their chain are stored instead, like other votes (`_far_ahead`).
        self.signed_before: dict[tuple[int, int], bytes] = {}
        self._own_ahead: list[ledger_pb2.BlockSignature] = []
        self.signatures_replayed = asyncio.Event()
        # Where a restart reads the signature topic again from (stored with the signatures); records are
        # held under their block's key, or under the batch of late signatures they belong to.
        self.replay = ReplayPoint()
        self._late_batch = 0
        # Per chain, the highest height whose votes may be in the database and not in memory: votes for
        # blocks far ahead of the chain's executed height are stored as they come (`_on_signatures`)
        # and read back when the block is cut (`_commit`).
        self._stored_votes_to: dict[int, int] = {}
        ordered = sorted(self.config.validator_keys)
        # The validator that writes every chain's time cuts (`_markers_loop`): the first by id, until
        # another validator's marker for chain 0's current height (one that stood in while it was down
        # or late) takes over (`takes_over_time_cuts`). Every validator learns it from the same log.
        self.time_cutter = ordered[0]
        self._validators = len(ordered)
        self._results_partitions = 1
        # Ids the database may hold (filled in _load): ids outside them need no preload query.
        self.stored_invoices = PresenceFilter(1)
        self.claimed_ids = PresenceFilter(1)

    # --- start-up ------------------------------------------------------------------------------
    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> list[int]:
        return await topic_partitions(consumer, topic, timeout_s=30.0)

    async def _load(self, partitions: list[int]) -> dict[int, int]:
        positions = {}
        async with self.pool.acquire() as conn:
            await store.pin_chain_count(conn, len(partitions))
            for chain_id in partitions:
                tip = await store.chain_tip(conn, chain_id)
                keys, registration_ids = await store.load_registry(conn, chain_id)
                self.chains[chain_id] = ChainExecutor(
                    chain_id=chain_id,
                    height=tip.next_height,
                    previous_hash=tip.previous_hash,
                    max_txs=self.config.max_txs,
                    authorities=self.config.authority_keys,
                    chains=len(partitions),
                    keys=keys,
                    registration_ids=registration_ids,
                )
                positions[chain_id] = tip.next_offset
                self.forgotten_below[chain_id] = max(1, tip.next_height - self.config.recent_heights)
                HEIGHT.labels(chain=str(chain_id)).set(tip.next_height - 1)
            self.stored_invoices, self.claimed_ids = await store.load_presence(conn)
            # The recent blocks, and any older one still waiting for finality or for its results (which
            # only a chain's result publishers mark).
            for r in await conn.fetch(
                "SELECT b.chain_id, b.height, b.header_hash, b.final, b.results_published FROM blocks b"
                " JOIN unnest($1::int[], $2::bigint[], $3::boolean[]) AS f(chain_id, floor, publishes)"
                " ON f.chain_id = b.chain_id"
                " WHERE b.height >= f.floor OR NOT b.final OR (f.publishes AND NOT b.results_published)",
                list(self.forgotten_below),
                list(self.forgotten_below.values()),
                [self.publishes_results(chain_id) for chain_id in self.forgotten_below],
            ):
                key = (r["chain_id"], r["height"])
                self.own_hashes[key] = bytes(r["header_hash"])
                if r["final"]:
                    self.final.add(key)
                    if not r["results_published"] and self.publishes_results(key[0]):
                        self.publish_queue.put_nowait(key)
                else:
                    # Our own vote comes from the database; our records on the topic are skipped.
                    self.votes.setdefault(key, {})[self.config.validator_id] = self.own_hashes[key]
            # Votes already stored for blocks not final yet (stored ahead of the block, or past the
            # held limit): the topic is read again only from the replay point.
            unfinal_keys = [key for key in self.own_hashes if key not in self.final]
            for key, stored_votes in (await store.stored_votes(conn, unfinal_keys)).items():
                for validator_id, digest in stored_votes.items():
                    self.votes.setdefault(key, {}).setdefault(validator_id, digest)
            for chain_id in partitions:
                self._stored_votes_to[chain_id] = await store.highest_signed_height(conn, chain_id)
            # Re-publish our signatures of blocks not final yet: we may have crashed before sending them.
            unfinal = await conn.fetch(
                "SELECT b.chain_id, b.height, b.header, s.signature FROM blocks b JOIN block_signatures s"
                " ON s.chain_id = b.chain_id AND s.height = b.height AND s.validator_id = $1 WHERE NOT b.final",
                self.config.validator_id,
            )
        for r in unfinal:
            await self._send_signature(r["chain_id"], r["height"], bytes(r["header"]), bytes(r["signature"]))
        return positions

    async def run(self, stop: asyncio.Event) -> None:
        """Load the chains from the database, then run the loops until `stop`.

        A loop that fails ends the run with its exception. Run again (after a lost database or broker:
        `service.Task`), it starts over from what is durable, as a restarted process would: the
        in-memory state is dropped, the chains are reloaded from the database, the transaction log is
        read again from the stored positions and the signature topic from its stored replay point, so
        no transaction is skipped and no height is signed twice with different headers.
        """
        if self._runs:
            self._reset()
        self._runs += 1
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.runtime.kafka_bootstrap,
            group_id=None,
            client_id=f"{self.config.validator_id}-tx",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=FETCH_MAX_RECORDS,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer, self._tx_topic)
            self._results_partitions = len(await self._partitions(consumer, self._results_topic))
            positions = await self._load(partitions)
            self.loaded.set()
            tps = {p: TopicPartition(self._tx_topic, p) for p in partitions}
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                consumer.seek(tp, positions[p])
            tasks = [
                asyncio.ensure_future(self._transactions_loop(consumer, stop, tps)),
                asyncio.ensure_future(self._signatures_loop(stop)),
                asyncio.ensure_future(self._results_loop(stop)),
                asyncio.ensure_future(self._markers_loop(stop)),
            ]
            try:
                # The loops end only when stopped. One that fails (a lost broker or database) ends the
                # run rather than leaving the validator up without finality or results: the run is
                # started again from the database (see above), and a defect stops the process.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if not stop.is_set():
                    raise RuntimeError("a validator loop ended before the validator was stopped")
                await asyncio.wait(tasks[:1], timeout=5.0)  # stopped: let the batch in hand be stored
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if self._unmarked:  # a clean stop leaves nothing to republish
                    with contextlib.suppress(Exception):
                        await self._mark_published()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    # --- transactions --------------------------------------------------------------------------
    async def _transactions_loop(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, tps: dict[int, TopicPartition]
    ) -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX_RECORDS)
            blocks: list[CutBlock] = []
            for tp, records in batch.items():
                blocks += await self._apply_batch(
                    self.chains[tp.partition], [decode_record(r.offset, r.value) for r in records]
                )
            if blocks:
                if not self.signatures_replayed.is_set():
                    await self.signatures_replayed.wait()
                await self._commit(blocks)
            if not batch and not self.caught_up.is_set():
                ends = await consumer.end_offsets(list(tps.values()))
                positions = [await consumer.position(tp) for tp in tps.values()]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps.values(), strict=True)):
                    self.caught_up.set()

    async def _apply_batch(self, chain: ChainExecutor, records: list[LogRecord]) -> list[CutBlock]:
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
            lookup_invoices = [i for i in missing_invoices if i in self.stored_invoices]
            lookup_txs = [t for t in missing_txs if t in self.claimed_ids]
            if lookup_invoices or lookup_txs:
                async with self.pool.acquire() as conn:
                    found, claimed = await store.fetch_preload(conn, chain.chain_id, lookup_invoices, lookup_txs)
                states.update(found)
            chain.preload(states, missing_txs, claimed)
        blocks = []
        for record in records:
            block = None
            if record.kind == "tx":
                assert record.tx is not None
                if not chain.has_pending:
                    self.pending_since[chain.chain_id] = time.monotonic()
                    self.pending_started.set()
                block = chain.on_transaction(record.offset, record.aggregate_id, record.tx)
            elif record.kind == "cut":
                assert record.marker is not None
                if (
                    chain.chain_id == 0
                    and takes_over_time_cuts(record.marker, chain.height, record.producer, self.config.validator_keys)
                    and record.producer != self.time_cutter
                ):
                    self.time_cutter = record.producer
                    TIME_CUTTER_CHANGES.inc()
                block = chain.on_time_to_cut(record.offset, record.marker)
            elif record.kind == "key":
                assert record.registration is not None
                chain.on_registration(record.offset, record.registration)
            if block is not None:
                blocks.append(block)
                self.last_cut[chain.chain_id] = time.monotonic()
                # From the cut on, the block's ids count as stored (its commit follows in this round).
                for invoice_id in block.states:
                    self.stored_invoices.add(invoice_id)
                for outcome in block.outcomes:
                    if claims_id(outcome):
                        self.claimed_ids.add(outcome.transaction_id)
                if chain.has_pending:
                    self.pending_since[chain.chain_id] = time.monotonic()
                    self.pending_started.set()
        return blocks

    async def _commit(self, blocks: list[CutBlock]) -> None:
        """Sign, publish the signatures, then store the blocks (one DB transaction for the batch).

        The signatures go out before the blocks are stored, so the other validators can reach a quorum
        while this one writes (under load the store takes tens of milliseconds at p99). That is safe
        because a block is a function of the log: a validator that crashes before its store replays
        the same log into the same headers, and before it signs anything after a restart it reads its
        own signatures back from the topic (`signed_before`), so it still never signs a second header
        for a height. Finality of these blocks is stored only once they are (`_write_votes`).
        """
        await self._load_stored_votes([(block.chain_id, block.height) for block in blocks])
        signed = []
        for block in blocks:
            before = self.signed_before.pop((block.chain_id, block.height), None)
            if before is None:  # our signature stored ahead of the block (`_note_own_signature`)
                before = self.votes.get((block.chain_id, block.height), {}).get(self.config.validator_id)
            if before is not None and before != block.header_hash:
                raise store.HeaderConflict(
                    f"chain {block.chain_id} height {block.height}: this validator signed another header for it"
                    " before (its signature is on the signature topic); refusing to sign a second one"
                )
            signature = self.config.signing_key.sign(block.header_bytes)
            signed.append(
                (
                    block,
                    ledger_pb2.BlockSignature(
                        chain_id=block.chain_id,
                        height=block.height,
                        header_hash=block.header_hash,
                        validator_id=self.config.validator_id,
                        signature=signature,
                    ),
                )
            )
        keys = []
        # Votes that came before our header and differ from it, taken now: once our signature is out the
        # block can become final (and its votes be dropped) before the store below ends.
        diverging: list[tuple[tuple[int, int], str, bytes]] = []
        for block, own in signed:
            key = (block.chain_id, block.height)
            keys.append(key)
            diverging += [
                (key, validator_id, digest)
                for validator_id, digest in self.votes.get(key, {}).items()
                if digest != block.header_hash
            ]
            self.own_hashes[key] = block.header_hash
            self.pending_results[key] = [
                (o.result.rejection_reason == DUPLICATE_TRANSACTION, claims_id(o), o.transaction_id, r)
                for o, r in zip(block.outcomes, block.results, strict=True)
            ]
            self.votes.setdefault(key, {}).setdefault(self.config.validator_id, block.header_hash)
            self._unstored.add(key)
            await self._send_signature(block.chain_id, block.height, block.header_bytes, own.signature.signature)
        await store.commit_blocks(self.pool, signed, self.config.validator_id)
        async with self._stored:
            self._unstored.difference_update(keys)
            self._stored.notify_all()
        for block, _ in signed:
            accepted = sum(1 for o in block.outcomes if o.result.accepted)
            TRANSACTIONS.labels(accepted="true").inc(accepted)
            TRANSACTIONS.labels(accepted="false").inc(len(block.outcomes) - accepted)
            BLOCKS_COMMITTED.labels(chain=str(block.chain_id)).inc()
            HEIGHT.labels(chain=str(block.chain_id)).set(block.height)
        self._forget_old({block.chain_id: block.height for block, _ in signed})
        newly = self._claim_final(keys)
        if diverging or newly:  # usually neither: signatures that came during the store were handled then
            # Signatures that arrived before our block: those of blocks now final, and those of blocks
            # we disagree on (kept as evidence), are stored now.
            held = self._take_held([*newly, *{key for key, _, _ in diverging}])
            await self._write_votes(diverging, held, newly)
        self.block_event.set()

    def _forget_old(self, tips: dict[int, int]) -> None:
        """Drop the in-memory header hashes, finality and votes of blocks `recent_heights` below each
        chain's tip (`tips`: chain -> last height stored); a block not final yet is kept."""
        for chain_id, tip in tips.items():
            start = self.forgotten_below.get(chain_id, 1)
            floor = tip - self.config.recent_heights + 1
            for height in range(start, floor):
                key = (chain_id, height)
                if key in self.final:
                    self.final.discard(key)
                    self.own_hashes.pop(key, None)
                    self.votes.pop(key, None)
            self.forgotten_below[chain_id] = max(start, floor)

    def _is_forgotten(self, key: tuple[int, int]) -> bool:
        return key[1] < self.forgotten_below.get(key[0], 1) and key not in self.own_hashes

    def _take_held(self, keys: list[tuple[int, int]]) -> list[ledger_pb2.BlockSignature]:
        taken: list[ledger_pb2.BlockSignature] = []
        for key in dict.fromkeys(keys):
            taken += self.held_signatures.pop(key, [])
        self._held -= len(taken)
        return taken

    async def _send_signature(self, chain_id: int, height: int, header: bytes, signature: bytes) -> None:
        envelope = signature_envelope(self.config.validator_id, chain_id, height, header, signature)
        # Not awaited: the producer is idempotent and ordered; a lost signature is re-sent on restart.
        await self.producer.send(
            self._sig_topic, value=envelope.SerializeToString(), key=envelope.aggregate_id.encode()
        )

    # --- signatures and finality -----------------------------------------------------------------
    async def _signatures_loop(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.runtime.kafka_bootstrap,
            group_id=None,
            client_id=f"{self.config.validator_id}-sig",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=FETCH_MAX_RECORDS,
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer, self._sig_topic)
            tps = [TopicPartition(self._sig_topic, p) for p in partitions]
            consumer.assign(tps)
            async with self.pool.acquire() as conn:
                stored = await store.signature_replay_points(conn)
            ends = await consumer.end_offsets(tps)
            starts = {}
            for tp in tps:
                start = stored.get(tp.partition, 0)
                if start > ends[tp]:  # the topic was recreated: read it all
                    start = 0
                if start:
                    consumer.seek(tp, start)
                else:
                    await consumer.seek_to_beginning(tp)
                self.replay.start(tp.partition, start)
                starts[tp.partition] = start
            log.info(
                "reading the signature topic",
                extra={"from_offsets": starts, "end_offsets": {tp.partition: end for tp, end in ends.items()}},
            )
            replay_ends = {tp: end for tp, end in ends.items() if end > starts[tp.partition]}
            if not replay_ends:
                self.signatures_replayed.set()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX_RECORDS)
                accepted = []
                read = {}
                for tp, records in batch.items():
                    for record in records:
                        sig = verified_signature(record.value, self.config.validator_keys, self.config.validator_id)
                        if sig is OWN_SIGNATURE:
                            self._note_own_signature(record.value, tp.partition, record.offset)
                            continue  # our own vote is recorded when the block is stored
                        if sig is None:
                            log.warning("ignoring invalid block signature", extra={"offset": record.offset})
                            continue
                        accepted.append(SignatureRecord(sig, tp.partition, record.offset))
                    if records:
                        read[tp.partition] = records[-1].offset + 1
                replayed = self.signatures_replayed.is_set()
                if not replayed:
                    positions = [(await consumer.position(tp), end) for tp, end in replay_ends.items()]
                    replayed = all(position >= end for position, end in positions)
                if accepted or read:
                    await self._on_signatures(accepted, read)
                elif self.late_signatures:  # a quiet moment: store what arrived after finality
                    await self._on_signatures([])
                # Only now: our own signatures stored ahead of their blocks must be in the database
                # before anything is signed.
                if replayed and not self.signatures_replayed.is_set():
                    self.signatures_replayed.set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def _note_own_signature(self, raw: bytes | None, partition: int, offset: int) -> None:
        """A signature of ours read from the topic. While the topic is replayed at start, one for a block
        the database does not hold is remembered (verified): we never sign another header for it. Blocks
        it holds need no check (storing another header for them raises HeaderConflict). A restart must
        read the record again until its block is stored and final."""
        replaying = not self.signatures_replayed.is_set()
        if not replaying and not self._unstored:
            return
        try:
            claimed = unpack(parse_envelope(raw or b""), ledger_pb2.BlockSignature)
        except (FapiaoError, DecodeError):
            return
        key = (claimed.chain_id, claimed.height)
        if key in self._unstored:
            self.replay.hold(key, partition, offset)
        if not replaying or key in self.own_hashes or self._is_forgotten(key):
            return
        if key in self.signed_before:
            self.replay.hold(key, partition, offset)
            return
        own_id = self.config.validator_id
        sig = verified_signature(raw, {own_id: self.config.validator_keys[own_id]})
        if sig is None or sig.validator_id != own_id:
            return
        if self._far_ahead(key):
            self._own_ahead.append(sig)  # stored with the batch's votes, checked when the block is cut
            return
        self.replay.hold(key, partition, offset)
        self.signed_before[key] = sig.header_hash

    async def _on_signatures(self, records: list[SignatureRecord], read: Mapping[int, int] | None = None) -> None:
        """Record verified votes; store signatures with the finality they complete.

        A signature of a block that is not final yet is held in memory and written in the statement
        that marks its block final (a restart re-reads the signature topic, so nothing held is lost).
        Signatures that diverge from our header are stored at once, as evidence; those arriving after
        finality ride along with the next write, or are written when the topic is quiet. At most
        HELD_SIGNATURES_LIMIT are held (a validator catching up from far behind writes them as they
        come instead of keeping them). `read`: per partition, the offset read up to (these records
        included); the replay point moves there once the records needed again after a restart are
        held in it.
        """
        touched = []
        equivocations: list[ledger_pb2.BlockSignature] = []
        diverging: list[tuple[tuple[int, int], str, bytes]] = []
        to_store: list[ledger_pb2.BlockSignature] = []
        quiet = not records and not read  # called with nothing: the topic is quiet
        forgotten: list[ledger_pb2.BlockSignature] = []
        recent: list[SignatureRecord] = []
        for record in records:
            sig = record.signature
            if self._is_forgotten((sig.chain_id, sig.height)):
                forgotten.append(sig)
            else:
                recent.append(record)
        if forgotten:
            await self._on_forgotten_signatures(forgotten)
        late_token = ("late", self._late_batch)
        stored_ahead: list[ledger_pb2.BlockSignature] = []
        ahead: dict[tuple[tuple[int, int], str], bytes] = {}
        for sig in self._own_ahead:  # our own, read while replaying: stored like the votes below
            to_store.append(sig)
            self._stored_votes_to[sig.chain_id] = max(self._stored_votes_to.get(sig.chain_id, 0), sig.height)
        self._own_ahead = []
        for sig, partition, offset in recent:
            key = (sig.chain_id, sig.height)
            if self._far_ahead(key):
                # Stored now, read back when the block is cut: a validator catching up from far behind
                # (or joining) keeps no votes in memory for blocks it is not near yet. The store finds a
                # second header against one stored before; one against another in this batch is found here.
                first = ahead.setdefault((key, sig.validator_id), sig.header_hash)
                if first != sig.header_hash:
                    equivocations.append(sig)
                    continue
                to_store.append(sig)
                stored_ahead.append(sig)
                self._stored_votes_to[key[0]] = max(self._stored_votes_to.get(key[0], 0), key[1])
                continue
            votes = self.votes.setdefault(key, {})
            known = votes.get(sig.validator_id)
            if known is not None:
                if known != sig.header_hash:
                    # Verified: the validator's own key signed both. Kept as evidence; its first vote stands.
                    equivocations.append(sig)
                continue
            votes[sig.validator_id] = sig.header_hash
            touched.append(key)
            own = self.own_hashes.get(key)
            if key in self.final and (own is None or own == sig.header_hash):
                self.late_signatures.append(sig)
                self.replay.hold(late_token, partition, offset)
                continue
            # Votes of a block not final live in memory only: a restart must read them again.
            self.replay.hold(key, partition, offset)
            if own is not None and own != sig.header_hash:
                diverging.append((key, sig.validator_id, sig.header_hash))
                to_store.append(sig)
            else:
                self.held_signatures.setdefault(key, []).append(sig)
                self._held += 1
        for partition, offset in (read or {}).items():
            self.replay.advance(partition, offset)
        newly = self._claim_final(touched)
        to_store += self._take_held(newly)
        if self._held > HELD_SIGNATURES_LIMIT:
            to_store += self._take_held(list(self.held_signatures))
        stored_late = None
        if newly or diverging or quiet or len(self.late_signatures) >= LATE_SIGNATURES_BATCH:
            if self.late_signatures:
                to_store += self.late_signatures
                self.late_signatures = []
                stored_late = late_token
                self._late_batch += 1
        if equivocations:
            self._report_equivocations([(s.chain_id, s.height, s.validator_id) for s in equivocations])
            async with self.pool.acquire() as conn:
                await store.record_equivocations(conn, equivocations)
        if to_store or newly or diverging:
            await self._write_votes(diverging, to_store, newly, stored_late)
        if stored_ahead:
            await self._count_votes_cut_meanwhile(stored_ahead)

    async def _count_votes_cut_meanwhile(self, stored: list[ledger_pb2.BlockSignature]) -> None:
        """Votes stored ahead of their block whose block was cut while they were being written (its
        read of the stored votes may have missed them): counted now."""
        keys = []
        diverging: list[tuple[tuple[int, int], str, bytes]] = []
        for sig in stored:
            key = (sig.chain_id, sig.height)
            votes = self.votes.get(key, {})
            if key not in self.own_hashes or key in self.final or sig.validator_id in votes:
                continue
            votes[sig.validator_id] = sig.header_hash
            self.votes[key] = votes
            keys.append(key)
            if sig.header_hash != self.own_hashes[key]:
                diverging.append((key, sig.validator_id, sig.header_hash))
        newly = self._claim_final(keys)
        if newly or diverging:
            await self._write_votes(diverging, [], newly)

    def _far_ahead(self, key: tuple[int, int]) -> bool:
        """A block more than `recent_heights` above its chain's next height: its votes go to the database."""
        chain = self.chains.get(key[0])
        return chain is not None and key[1] >= chain.height + self.config.recent_heights

    async def _load_stored_votes(self, keys: list[tuple[int, int]]) -> None:
        """Add the votes stored ahead of these blocks (see `_far_ahead`) to those in memory."""
        wanted = [key for key in keys if key[1] <= self._stored_votes_to.get(key[0], 0)]
        if not wanted:
            return
        async with self.pool.acquire() as conn:
            found = await store.stored_votes(conn, wanted)
        for key, stored_votes in found.items():
            votes = self.votes.setdefault(key, {})
            for validator_id, digest in stored_votes.items():
                votes.setdefault(validator_id, digest)

    async def _on_forgotten_signatures(self, signatures: list[ledger_pb2.BlockSignature]) -> None:
        """Signatures of final blocks no longer in memory: checked against the stored headers and stored
        (a divergent one is reported as such). Their blocks are final already, so no vote is counted."""
        async with self.pool.acquire() as conn:
            ours = await store.stored_header_hashes(conn, [(s.chain_id, s.height) for s in signatures])
            for sig in signatures:
                key = (sig.chain_id, sig.height)
                if key in ours and ours[key] != sig.header_hash:
                    await self._report_divergence(conn, key, sig.validator_id, sig.header_hash, ours[key])
            self._report_equivocations(
                await store.store_signatures(conn, [s for s in signatures if (s.chain_id, s.height) in ours])
            )

    async def _write_votes(
        self,
        diverging: list[tuple[tuple[int, int], str, bytes]],
        signatures: list[ledger_pb2.BlockSignature],
        newly_final: list[tuple[int, int]],
        stored_late: tuple[str, int] | None = None,
    ) -> None:
        """Report divergences, then store signatures with the finality they complete (one statement),
        and the replay point as it is once they are: the records of the blocks made final, and of the
        batch of late signatures `stored_late`, are then released from it.

        The results of newly final blocks are queued for publishing first: finality is decided by the
        signatures on the topic, which a restarted validator reads again, so the write only records it
        (the reads that need it wait for it: `wait_pending_writes`). The write waits until the blocks
        concerned are stored (`_commit` publishes our signature first): marking a block final before
        its row exists would be lost.
        """
        if newly_final:
            self._unwritten_final.update(newly_final)
            for key in newly_final:
                self.publish_queue.put_nowait(key)
        concerned = {*newly_final, *(key for key, _, _ in diverging), *((s.chain_id, s.height) for s in signatures)}
        if concerned & self._unstored:
            async with self._stored:
                await self._stored.wait_for(lambda: not concerned & self._unstored)
        released = [*newly_final, *([stored_late] if stored_late else [])]
        async with self.pool.acquire() as conn:
            for key, validator_id, digest in diverging:
                await self._report_divergence(conn, key, validator_id, digest)
            self._report_equivocations(
                await store.store_signatures(
                    conn, signatures, newly_final=newly_final, replay_from=self.replay.positions(excluding=released)
                )
            )
        self.replay.release(released)
        if newly_final:
            async with self._stored:
                self._unwritten_final.difference_update(newly_final)
                self._stored.notify_all()
            for key in newly_final:
                BLOCKS_FINAL.labels(chain=str(key[0])).inc()
            self.block_event.set()

    @staticmethod
    def _report_equivocations(found: list[tuple[int, int, str]]) -> None:
        """Log and count equivocations: a second header a validator signed for a height (the evidence,
        its signed header, is stored by the caller or by the statement that found it)."""
        for chain_id, height, validator_id in found:
            log.error(
                "validator signed two headers for one height",
                extra={"validator": validator_id, "chain": chain_id, "height": height},
            )
            EQUIVOCATIONS.labels(validator=validator_id).inc()

    async def wait_pending_writes(self, timeout_s: float = 2.0) -> bool:
        """Wait until the blocks this validator has signed but not stored yet, and the finality it has
        decided but not stored yet, are stored (at most timeout_s); False if nothing was pending. For
        reads that did not find in the database what the validator has already signed or declared
        final (a client may hold its result)."""
        unstored, unwritten = set(self._unstored), set(self._unwritten_final)
        if not unstored and not unwritten:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._stored:
                await self._stored.wait_for(
                    lambda: not unstored & self._unstored and not unwritten & self._unwritten_final
                )
        return True

    async def _report_divergence(
        self,
        conn: asyncpg.Connection,
        key: tuple[int, int],
        validator_id: str,
        theirs: bytes,
        ours: bytes | None = None,
    ) -> None:
        ours = ours if ours is not None else self.own_hashes[key]
        log.error(
            "validator header diverges from ours",
            extra={"chain": key[0], "height": key[1], "validator": validator_id, "theirs": theirs.hex()},
        )
        DIVERGENCES.labels(validator=validator_id).inc()
        await store.record_divergence(conn, key[0], key[1], validator_id, theirs, ours)

    def _claim_final(self, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Blocks among `keys` that just reached a quorum of our header hash; claimed at once (no await),
        so a concurrent check cannot finalize the same block twice. The caller stores and announces them."""
        newly = []
        for key in dict.fromkeys(keys):
            own = self.own_hashes.get(key)
            if own is None or key in self.final:
                continue
            if sum(1 for digest in self.votes.get(key, {}).values() if digest == own) >= self.config.quorum:
                newly.append(key)
        self.final.update(newly)
        return newly

    # --- results ------------------------------------------------------------------------------
    def publishes_results(self, chain_id: int) -> bool:
        return self.config.validator_id in result_publishers(sorted(self.config.validator_keys), chain_id)

    async def _results_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._unmarked:
                # Published blocks are marked in batches: at most mark_published_ms after the last.
                try:
                    first = await asyncio.wait_for(
                        self.publish_queue.get(), timeout=self.config.mark_published_ms / 1000
                    )
                except TimeoutError:
                    await self._mark_published()
                    continue
            else:
                first = await self.publish_queue.get()
            keys = [first]
            while not self.publish_queue.empty() and len(keys) < 100:
                keys.append(self.publish_queue.get_nowait())
            # Only the chain's result publishers publish and mark (results_published means nothing on
            # the others): no database round trip for the blocks of other chains.
            published = []
            for key in keys:
                results = self.pending_results.pop(key, None)
                if self.publishes_results(key[0]):
                    published.append((key, results))
            await self._publish_results(published)
            # Votes of final, published blocks are no longer needed for finality.
            for key in keys:
                if len(self.votes.get(key, {})) >= self._validators:
                    del self.votes[key]

    async def _publish_results(
        self, blocks: list[tuple[tuple[int, int], list[tuple[bool, bool, str, bytes]] | None]]
    ) -> None:
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
                    conn = await stack.enter_async_context(self.pool.acquire())
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
                    futures.append(await self._send_result(transaction_id, event_id, raw, occurred_at))
        await asyncio.gather(*futures)
        # Marked in batches: a crash before the mark republishes those results, which consumers
        # deduplicate (same event ids); it saves a write per block.
        self._unmarked += [key for key, _ in blocks]
        if len(self._unmarked) >= MARK_PUBLISHED_BATCH:
            await self._mark_published()

    async def _mark_published(self) -> None:
        # A block whose results went out before its row was stored is marked in a later round.
        keys = [key for key in self._unmarked if key not in self._unstored]
        self._unmarked = [key for key in self._unmarked if key in self._unstored]
        if not keys:
            return
        async with self.pool.acquire() as conn:
            await store.mark_published(conn, keys)

    async def _send_result(
        self, transaction_id: str, event_id: uuid.UUID, raw: bytes, occurred_at: Timestamp
    ) -> asyncio.Future[object]:
        envelope = result_envelope(self.config.validator_id, transaction_id, event_id, raw, occurred_at)
        key = transaction_id.encode()
        # Explicit partition (C crc32): aiokafka's pure-Python murmur2 costs more than the rest of the send.
        partition = zlib.crc32(key) % self._results_partitions
        future: asyncio.Future[object] = await self.producer.send(
            self._results_topic, value=envelope.SerializeToString(), key=key, partition=partition
        )
        return future

    # --- time-to-cut markers -------------------------------------------------------------------
    async def _markers_loop(self, stop: asyncio.Event) -> None:
        """Send a marker when a chain's oldest pending transaction is due; sleep until the next is due.

        No polling tick: the loop sleeps until the earliest deadline, or until a chain that had nothing
        pending gets a transaction (`pending_started`), so idle validators do not wake up at all.
        """
        cut_s = self.config.cut_ms / 1000
        cut_idle_s = self.config.cut_idle_ms / 1000
        # A marker whose send was acknowledged is in the log: every validator reads it. Sending it again
        # only adds records every validator must read, so the same height is re-marked only after a
        # long pause (a lost send, a stuck producer), never while a loaded broker is merely slow.
        resend_s = max(20 * cut_s, MARKER_RESEND_MIN_S)
        stand_in_s = max(5 * cut_s, STAND_IN_MIN_S)
        while not stop.is_set():
            # Cleared before the scan: a chain that starts pending during it wakes the next wait.
            self.pending_started.clear()
            now = time.monotonic()
            # One validator cuts every chain on time (`time_cutter`), so their cuts can coincide
            # (`chains_to_mark`); the others step in only if it is down, after long enough for its
            # marker's round trip through a loaded broker. A stand-in's claim, once read in chain 0's
            # log, makes it the time cutter.
            designated = self.time_cutter == self.config.validator_id
            due: dict[int, float] = {}
            unmarked: set[int] = set()
            for chain_id, chain in self.chains.items():
                if not chain.has_pending:
                    continue
                pending_since = self.pending_since.get(chain_id, now)
                sent_height, sent_at = self.last_marker.get(chain_id, (-1, 0.0))
                if designated:
                    start = cut_interval_start(self.last_cut.get(chain_id), (sent_height, sent_at), chain.height)
                    due[chain_id] = time_to_cut_due(pending_since, start, cut_s, cut_idle_s)
                else:
                    due[chain_id] = pending_since + stand_in_s
                if sent_height == chain.height:
                    due[chain_id] = max(due[chain_id], sent_at + resend_s)
                else:
                    unmarked.add(chain_id)
            # Only the time cutter brings pending chains along; a stand-in marks the overdue ones, and
            # claims the time cuts with a marker for chain 0's current height (`takes_over_time_cuts`),
            # even if chain 0 has nothing pending: its log alone moves the role, so without the claim
            # the other chains would wait the stand-in time for every block while chain 0 is idle.
            to_mark = chains_to_mark(due, unmarked if designated else set(), now)
            if to_mark and not designated and 0 not in to_mark and 0 in self.chains:
                claimed_height, claimed_at = self.last_marker.get(0, (-1, 0.0))
                if claimed_height != self.chains[0].height or now >= claimed_at + resend_s:
                    to_mark.insert(0, 0)
            for chain_id in to_mark:
                height = self.chains[chain_id].height
                self.last_marker[chain_id] = (height, now)
                await self._send_marker(chain_id, height)
                TIME_CUTS_SENT.labels("time_cutter" if designated else "stand_in").inc()
                due[chain_id] = now + resend_s
            next_due = min(due.values(), default=None)
            timeout = None if next_due is None else max(0.001, next_due - time.monotonic())
            waiter = asyncio.ensure_future(self.pending_started.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    async def _send_marker(self, chain_id: int, height: int) -> None:
        envelope = marker_envelope(self.config.validator_id, chain_id, height)
        await self.producer.send(
            self._tx_topic, value=envelope.SerializeToString(), key=envelope.aggregate_id.encode(), partition=chain_id
        )
