"""Finality votes: the signature topic read, checked and counted; a block is final at a quorum of our header.

Reads ledger.signatures.v1 from the stored replay point, verifies each signature over the header bytes it
carries, reports divergent headers and equivocations, and at quorum hands the block to result
publishing, then stores the signatures with the finality they complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.consumer import watch_lag
from fapiao_runtime.envelope import parse_envelope, unpack
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.ledger_client import topic_partitions
from google.protobuf.message import DecodeError

from ledger import store
from ledger.invariants import InvariantViolation
from ledger.metrics import BLOCKS_FINAL, DIVERGENCES, EQUIVOCATIONS
from ledger.pending_writes import BlockKey, PendingWrites
from ledger.records import OWN_SIGNATURE, verified_signature
from ledger.replay import ReplayPoint
from ledger.settings import LedgerSettings

log = logging.getLogger(__name__)

FETCH_MAX_RECORDS = 5000
HELD_SIGNATURES_LIMIT = 20_000
LATE_SIGNATURES_BATCH = 100

# A vote that differs from our header: (block, validator, its header hash).
Divergence = tuple[BlockKey, str, bytes]


class SignatureRecord(NamedTuple):
    """A verified signature and where it was read on the signature topic."""

    signature: ledger_pb2.BlockSignature
    partition: int
    offset: int


class ChainHeight(Protocol):
    """What finality reads of a chain (`chain.ChainExecutor`): the next height it will cut."""

    @property
    def height(self) -> int: ...


class FinalityVotes:
    """Owns what decides finality: our header hash of each recent block, the votes counted for it, the
    blocks final, the signatures held until the write of the finality they complete, our own signatures
    read back from the topic, and the replay point a restart reads the topic again from.

    Per chain only the latest `recent_heights` blocks are kept in memory; signatures of older ones are
    checked against the stored headers. `on_final` is told the blocks that became final (their results
    go out before the finality is stored); `block_event` is set when a block is stored or becomes final.
    """

    def __init__(
        self,
        settings: LedgerSettings,
        pool: asyncpg.Pool,
        chains: Mapping[int, ChainHeight],
        pending: PendingWrites,
        on_final: Callable[[list[BlockKey]], None],
        block_event: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._chains = chains
        self._pending = pending
        self._on_final = on_final
        self._block_event = block_event
        self._validators = len(settings.validator_keys)
        self._own_hashes: dict[BlockKey, bytes] = {}
        self._votes: dict[BlockKey, dict[str, bytes]] = {}
        self._final: set[BlockKey] = set()
        # Per chain: heights below this were dropped from own_hashes, final and votes (recent_heights).
        self._forgotten_below: dict[int, int] = {}
        # Other validators' signatures are written with the finality they complete (one statement per
        # finalized batch, not one per arrival); see on_signatures.
        self._held_signatures: dict[BlockKey, list[ledger_pb2.BlockSignature]] = {}
        self._held = 0
        self._late_signatures: list[ledger_pb2.BlockSignature] = []
        # Our own signatures found on the signature topic for blocks our database does not hold (it was
        # lost or restored from an older copy): we never sign another header for those heights. Blocks
        # are signed only once the topic has been read to its end as of start (`replayed`). Those of
        # blocks far ahead of their chain are stored instead, like other votes (`_far_ahead`).
        self._signed_before: dict[BlockKey, bytes] = {}
        self._own_ahead: list[ledger_pb2.BlockSignature] = []
        self.replayed = asyncio.Event()
        # Where a restart reads the signature topic again from (stored with the signatures); records are
        # held under their block's key, or under the batch of late signatures they belong to.
        self.replay = ReplayPoint()
        self._late_batch = 0
        # Per chain, the highest height whose votes may be in the database and not in memory: votes for
        # blocks far ahead of the chain's executed height are stored as they come (`on_signatures`) and
        # read back when the block is cut (`check_first_headers`).
        self._stored_votes_to: dict[int, int] = {}

    # --- what is known ---------------------------------------------------------------------------
    def header_hash(self, key: BlockKey) -> bytes | None:
        """Our header hash of a recent block (None if not cut yet, or forgotten)."""
        return self._own_hashes.get(key)

    def is_final(self, key: BlockKey) -> bool:
        """Whether a recent block is final (forgotten blocks are final, and answer False)."""
        return key in self._final

    def votes(self, key: BlockKey) -> dict[str, bytes]:
        """The votes counted for a recent block: validator -> the header hash it signed."""
        return dict(self._votes.get(key, {}))

    @property
    def held_signatures(self) -> int:
        """Signatures held in memory until the write of the finality they complete."""
        return self._held

    @property
    def late_signatures(self) -> int:
        """Signatures that arrived after their block's finality and are not stored yet."""
        return len(self._late_signatures)

    def signed_before(self, key: BlockKey) -> bytes | None:
        """The header hash our own signature on the topic names for a block our database lacks."""
        return self._signed_before.get(key)

    def is_forgotten(self, key: BlockKey) -> bool:
        """A block final and far enough below its chain's tip to be in the database only."""
        return key[1] < self._forgotten_below.get(key[0], 1) and key not in self._own_hashes

    # --- start-up ----------------------------------------------------------------------------------
    async def load(
        self, conn: asyncpg.Connection, next_heights: Mapping[int, int], publishes: Callable[[int], bool]
    ) -> list[BlockKey]:
        """Load the recent blocks of each chain (`next_heights`: chain -> its next height), any older one
        still waiting for finality or for its results, and the votes stored for blocks not final.
        Returns the final blocks whose results are not marked published on chains this validator
        publishes (`publishes`)."""
        for chain_id, next_height in next_heights.items():
            self._forgotten_below[chain_id] = max(1, next_height - self._settings.recent_heights)
        unpublished = []
        for r in await store.recent_blocks(
            conn, self._forgotten_below, {chain_id: publishes(chain_id) for chain_id in self._forgotten_below}
        ):
            key = (r.chain_id, r.height)
            self._own_hashes[key] = r.header_hash
            if r.final:
                self._final.add(key)
                if not r.results_published and publishes(key[0]):
                    unpublished.append(key)
            else:
                # Our own vote comes from the database; our records on the topic are skipped.
                self._votes.setdefault(key, {})[self._settings.validator_id] = r.header_hash
        # Votes already stored for blocks not final yet (stored ahead of the block, or past the held
        # limit): the topic is read again only from the replay point.
        unfinal_keys = [key for key in self._own_hashes if key not in self._final]
        for key, stored_votes in (await store.stored_votes(conn, unfinal_keys)).items():
            for validator_id, digest in stored_votes.items():
                self._votes.setdefault(key, {}).setdefault(validator_id, digest)
        for chain_id in next_heights:
            self._stored_votes_to[chain_id] = await store.highest_signed_height(conn, chain_id)
        return unpublished

    # --- the signature topic -----------------------------------------------------------------------
    async def run(self, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
        """Read the signature topic from the stored replay point until `stop`. `replayed` is set once
        it has been read to its end as of start (our own signatures stored ahead of their blocks are
        then in the database)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            client_id=f"{self._settings.validator_id}-sig",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=FETCH_MAX_RECORDS,
        )
        await consumer.start()
        lag = watch_lag(f"{self._settings.validator_id}-sig", lambda: consumer)
        try:
            partitions = await topic_partitions(consumer, topic, timeout_s=30.0)
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            async with self._pool.acquire() as conn:
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
                self.replayed.set()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX_RECORDS)
                accepted = []
                read = {}
                for tp, records in batch.items():
                    for record in records:
                        sig = verified_signature(
                            record.value, self._settings.validator_keys, self._settings.validator_id
                        )
                        if sig is OWN_SIGNATURE:
                            self.note_own_signature(record.value, tp.partition, record.offset)
                            continue  # our own vote is recorded when the block is stored
                        if sig is None:
                            log.warning("ignoring invalid block signature", extra={"offset": record.offset})
                            continue
                        accepted.append(SignatureRecord(sig, tp.partition, record.offset))
                    if records:
                        read[tp.partition] = records[-1].offset + 1
                replayed = self.replayed.is_set()
                if not replayed:
                    positions = [(await consumer.position(tp), end) for tp, end in replay_ends.items()]
                    replayed = all(position >= end for position, end in positions)
                if accepted or read:
                    await self.on_signatures(accepted, read)
                elif self._late_signatures:  # a quiet moment: store what arrived after finality
                    await self.on_signatures([])
                # Only now: our own signatures stored ahead of their blocks must be in the database
                # before anything is signed.
                if replayed and not self.replayed.is_set():
                    self.replayed.set()
        finally:
            lag.close()
            with contextlib.suppress(Exception):
                await consumer.stop()

    def note_own_signature(self, raw: bytes | None, partition: int, offset: int) -> None:
        """A signature of ours read from the topic. While the topic is replayed at start, one for a block
        the database does not hold is remembered (verified): we never sign another header for it. Blocks
        it holds need no check (storing another header for them raises HeaderConflict). A restart must
        read the record again until its block is stored and final."""
        replaying = not self.replayed.is_set()
        if not replaying and not self._pending.any_unstored:
            return
        try:
            claimed = unpack(parse_envelope(raw or b""), ledger_pb2.BlockSignature)
        except (FapiaoError, DecodeError):
            return
        key = (claimed.chain_id, claimed.height)
        if self._pending.is_unstored(key):
            self.replay.hold(key, partition, offset)
        if not replaying or key in self._own_hashes or self.is_forgotten(key):
            return
        if key in self._signed_before:
            self.replay.hold(key, partition, offset)
            return
        own_id = self._settings.validator_id
        sig = verified_signature(raw, {own_id: self._settings.validator_keys[own_id]})
        if sig is None or sig.validator_id != own_id:
            return
        if self._far_ahead(key):
            self._own_ahead.append(sig)  # stored with the batch's votes, checked when the block is cut
            return
        self.replay.hold(key, partition, offset)
        self._signed_before[key] = sig.header_hash

    async def on_signatures(self, records: list[SignatureRecord], read: Mapping[int, int] | None = None) -> None:
        """Record verified votes; store signatures with the finality they complete.

        A signature of a block that is not final yet is held in memory and written in the statement
        that marks its block final (a restart re-reads the signature topic, so nothing held is lost).
        Signatures that diverge from our header are stored at once, as evidence; those arriving after
        finality ride along with the next write, or are written when the topic is quiet (called with
        nothing). At most HELD_SIGNATURES_LIMIT are held (a validator catching up from far behind
        writes them as they come instead of keeping them). `read`: per partition, the offset read up
        to (these records included); the replay point moves there once the records needed again after
        a restart are held in it.
        """
        touched = []
        equivocations: list[ledger_pb2.BlockSignature] = []
        diverging: list[Divergence] = []
        to_store: list[ledger_pb2.BlockSignature] = []
        quiet = not records and not read
        forgotten: list[ledger_pb2.BlockSignature] = []
        recent: list[SignatureRecord] = []
        for record in records:
            sig = record.signature
            if self.is_forgotten((sig.chain_id, sig.height)):
                forgotten.append(sig)
            else:
                recent.append(record)
        if forgotten:
            await self._on_forgotten_signatures(forgotten)
        late_token = ("late", self._late_batch)
        stored_ahead: list[ledger_pb2.BlockSignature] = []
        ahead: dict[tuple[BlockKey, str], bytes] = {}
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
            votes = self._votes.setdefault(key, {})
            known = votes.get(sig.validator_id)
            if known is not None:
                if known != sig.header_hash:
                    # Verified: the validator's own key signed both. Kept as evidence; its first vote stands.
                    equivocations.append(sig)
                continue
            votes[sig.validator_id] = sig.header_hash
            touched.append(key)
            own = self._own_hashes.get(key)
            if key in self._final and (own is None or own == sig.header_hash):
                self._late_signatures.append(sig)
                self.replay.hold(late_token, partition, offset)
                continue
            # Votes of a block not final live in memory only: a restart must read them again.
            self.replay.hold(key, partition, offset)
            if own is not None and own != sig.header_hash:
                diverging.append((key, sig.validator_id, sig.header_hash))
                to_store.append(sig)
            else:
                self._held_signatures.setdefault(key, []).append(sig)
                self._held += 1
        for partition, offset in (read or {}).items():
            self.replay.advance(partition, offset)
        newly = self._claim_final(touched)
        to_store += self._take_held(newly)
        if self._held > HELD_SIGNATURES_LIMIT:
            to_store += self._take_held(list(self._held_signatures))
        stored_late = None
        if newly or diverging or quiet or len(self._late_signatures) >= LATE_SIGNATURES_BATCH:
            if self._late_signatures:
                to_store += self._late_signatures
                self._late_signatures = []
                stored_late = late_token
                self._late_batch += 1
        if equivocations:
            self._report_equivocations([(s.chain_id, s.height, s.validator_id) for s in equivocations])
            async with self._pool.acquire() as conn:
                await store.record_equivocations(conn, equivocations)
        if to_store or newly or diverging:
            await self._write_votes(diverging, to_store, newly, stored_late)
        if stored_ahead:
            await self._count_votes_cut_meanwhile(stored_ahead)

    async def _count_votes_cut_meanwhile(self, stored: list[ledger_pb2.BlockSignature]) -> None:
        """Votes stored ahead of their block whose block was cut while they were being written (its
        read of the stored votes may have missed them): counted now."""
        keys = []
        diverging: list[Divergence] = []
        for sig in stored:
            key = (sig.chain_id, sig.height)
            votes = self._votes.get(key, {})
            if key not in self._own_hashes or key in self._final or sig.validator_id in votes:
                continue
            votes[sig.validator_id] = sig.header_hash
            self._votes[key] = votes
            keys.append(key)
            if sig.header_hash != self._own_hashes[key]:
                diverging.append((key, sig.validator_id, sig.header_hash))
        newly = self._claim_final(keys)
        if newly or diverging:
            await self._write_votes(diverging, [], newly)

    def _far_ahead(self, key: BlockKey) -> bool:
        """A block more than `recent_heights` above its chain's next height: its votes go to the database."""
        chain = self._chains.get(key[0])
        return chain is not None and key[1] >= chain.height + self._settings.recent_heights

    async def _on_forgotten_signatures(self, signatures: list[ledger_pb2.BlockSignature]) -> None:
        """Signatures of final blocks no longer in memory: checked against the stored headers and stored
        (a divergent one is reported as such). Their blocks are final already, so no vote is counted."""
        async with self._pool.acquire() as conn:
            ours = await store.stored_header_hashes(conn, [(s.chain_id, s.height) for s in signatures])
            for sig in signatures:
                key = (sig.chain_id, sig.height)
                if key in ours and ours[key] != sig.header_hash:
                    await self._report_divergence(conn, key, sig.validator_id, sig.header_hash, ours[key])
            self._report_equivocations(
                await store.store_signatures(conn, [s for s in signatures if (s.chain_id, s.height) in ours])
            )

    # --- our own blocks ----------------------------------------------------------------------------
    async def check_first_headers(self, blocks: Iterable[tuple[BlockKey, bytes]]) -> None:
        """Before blocks (key, header hash) are signed: raise HeaderConflict if our signature of another
        header for one of them is on the topic (`note_own_signature`) or stored ahead of the block. A
        validator never signs two headers for one height."""
        blocks = list(blocks)
        await self._load_stored_votes([key for key, _ in blocks])
        for key, header_hash in blocks:
            before = self._signed_before.pop(key, None)
            if before is None:  # our signature stored ahead of the block
                before = self._votes.get(key, {}).get(self._settings.validator_id)
            if before is not None and before != header_hash:
                raise store.HeaderConflict(
                    f"chain {key[0]} height {key[1]}: this validator signed another header for it"
                    " before (its signature is on the signature topic); refusing to sign a second one"
                )

    def block_signed(self, key: BlockKey, header_hash: bytes) -> list[Divergence]:
        """Our signature of `key` over `header_hash` is going out: it is our vote. Returns the votes that
        came before our header and differ from it, taken now: once our signature is out the block can
        become final (and its votes be dropped) before its store ends."""
        held = self._own_hashes.get(key)
        if held is not None and held != header_hash:
            raise InvariantViolation(f"block {key} changed after it was cut (final: {key in self._final})")
        diverging = [
            (key, validator_id, digest)
            for validator_id, digest in self._votes.get(key, {}).items()
            if digest != header_hash
        ]
        self._own_hashes[key] = header_hash
        self._votes.setdefault(key, {}).setdefault(self._settings.validator_id, header_hash)
        return diverging

    async def blocks_stored(self, keys: list[BlockKey], tips: Mapping[int, int], diverging: list[Divergence]) -> None:
        """Our blocks `keys` are stored (`tips`: chain -> its last height stored); `diverging`: the votes
        `block_signed` found against them. Finalizes those already at quorum, stores the signatures that
        came before them, forgets old blocks, and announces the new blocks (`block_event`)."""
        self._forget_old(tips)
        newly = self._claim_final(keys)
        if diverging or newly:  # usually neither: signatures that came during the store were handled then
            # Signatures that arrived before our block: those of blocks now final, and those of blocks
            # we disagree on (kept as evidence), are stored now.
            held = self._take_held([*newly, *{key for key, _, _ in diverging}])
            await self._write_votes(diverging, held, newly)
        self._block_event.set()

    def release_votes(self, keys: Iterable[BlockKey]) -> None:
        """Final blocks whose results were handled: a block every validator voted for needs its votes no
        more (no later vote can come but an equivocation, which the store finds)."""
        for key in keys:
            if len(self._votes.get(key, {})) >= self._validators:
                del self._votes[key]

    async def _load_stored_votes(self, keys: list[BlockKey]) -> None:
        """Add the votes stored ahead of these blocks (see `_far_ahead`) to those in memory."""
        wanted = [key for key in keys if key[1] <= self._stored_votes_to.get(key[0], 0)]
        if not wanted:
            return
        async with self._pool.acquire() as conn:
            found = await store.stored_votes(conn, wanted)
        for key, stored_votes in found.items():
            votes = self._votes.setdefault(key, {})
            for validator_id, digest in stored_votes.items():
                votes.setdefault(validator_id, digest)

    def _forget_old(self, tips: Mapping[int, int]) -> None:
        """Drop the in-memory header hashes, finality and votes of blocks `recent_heights` below each
        chain's tip (`tips`: chain -> last height stored); a block not final yet is kept."""
        for chain_id, tip in tips.items():
            start = self._forgotten_below.get(chain_id, 1)
            floor = tip - self._settings.recent_heights + 1
            for height in range(start, floor):
                key = (chain_id, height)
                if key in self._final:
                    self._final.discard(key)
                    self._own_hashes.pop(key, None)
                    self._votes.pop(key, None)
            self._forgotten_below[chain_id] = max(start, floor)

    # --- finality ----------------------------------------------------------------------------------
    def _claim_final(self, keys: list[BlockKey]) -> list[BlockKey]:
        """Blocks among `keys` that just reached a quorum of our header hash; claimed at once (no await),
        so a concurrent check cannot finalize the same block twice. The caller stores and announces them."""
        newly = []
        for key in dict.fromkeys(keys):
            own = self._own_hashes.get(key)
            if own is None or key in self._final:
                continue  # votes count only for blocks we hold, and a block is finalized once
            if sum(1 for digest in self._votes.get(key, {}).values() if digest == own) >= self._settings.quorum:
                newly.append(key)
        self._final.update(newly)
        return newly

    def _take_held(self, keys: list[BlockKey]) -> list[ledger_pb2.BlockSignature]:
        taken: list[ledger_pb2.BlockSignature] = []
        for key in dict.fromkeys(keys):
            taken += self._held_signatures.pop(key, [])
        self._held -= len(taken)
        return taken

    async def _write_votes(
        self,
        diverging: list[Divergence],
        signatures: list[ledger_pb2.BlockSignature],
        newly_final: list[BlockKey],
        stored_late: tuple[str, int] | None = None,
    ) -> None:
        """Report divergences, then store signatures with the finality they complete (one statement),
        and the replay point as it is once they are: the records of the blocks made final, and of the
        batch of late signatures `stored_late`, are then released from it.

        The results of newly final blocks are queued for publishing first: finality is decided by the
        signatures on the topic, which a restarted validator reads again, so the write only records it
        (the reads that need it wait for it: `PendingWrites.wait_settled`). The write waits until the
        blocks concerned are stored (our signature goes out first): marking a block final before its
        row exists would be lost.
        """
        if newly_final:
            self._pending.deciding_final(newly_final)
            self._on_final(newly_final)
        concerned = {*newly_final, *(key for key, _, _ in diverging), *((s.chain_id, s.height) for s in signatures)}
        await self._pending.wait_stored(concerned)
        released = [*newly_final, *([stored_late] if stored_late else [])]
        async with self._pool.acquire() as conn:
            for key, validator_id, digest in diverging:
                await self._report_divergence(conn, key, validator_id, digest)
            self._report_equivocations(
                await store.store_signatures(
                    conn, signatures, newly_final=newly_final, replay_from=self.replay.positions(excluding=released)
                )
            )
        self.replay.release(released)
        if newly_final:
            await self._pending.final_written(newly_final)
            for key in newly_final:
                BLOCKS_FINAL.labels(chain=str(key[0])).inc()
            self._block_event.set()

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

    async def _report_divergence(
        self, conn: asyncpg.Connection, key: BlockKey, validator_id: str, theirs: bytes, ours: bytes | None = None
    ) -> None:
        ours = ours if ours is not None else self._own_hashes[key]
        log.error(
            "validator header diverges from ours",
            extra={"chain": key[0], "height": key[1], "validator": validator_id, "theirs": theirs.hex()},
        )
        DIVERGENCES.labels(validator=validator_id).inc()
        await store.record_divergence(conn, key[0], key[1], validator_id, theirs, ours)
