"""How a validator's finality votes store other validators' signatures (unit tests with a fake store).

Signatures of blocks that are not final are held in memory and written with the finality they
complete; those arriving after finality are batched or written when the topic is quiet; divergent ones
are written at once; and no more than HELD_SIGNATURES_LIMIT are ever held. Each write stores where a
restart reads the signature topic again from: no record whose effect is not stored yet is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from fapiao.ledger.v1 import ledger_pb2
from ledger import finality as finality_module
from ledger import store
from ledger.finality import FinalityVotes, SignatureRecord
from ledger.invariants import InvariantViolation
from ledger.pending_writes import BlockKey, PendingWrites
from ledger.records import signature_envelope
from ledger.settings import LedgerSettings
from ledger.validator import run_loops

from tests.ledger.support import IDS, unit_settings

pytestmark = pytest.mark.unit

OURS = b"\x01" * 32
THEIRS = b"\x02" * 32


class _FakePool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        yield object()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[tuple[str, int]], list[tuple[int, int]]]]:
    """Every store_signatures call as ([(validator, height) stored], [blocks made final])."""
    calls: list[tuple[list[tuple[str, int]], list[tuple[int, int]]]] = []
    replay_points.clear()

    async def store_signatures(
        conn: object,
        signatures: list[ledger_pb2.BlockSignature],
        newly_final: Sequence[tuple[int, int]] = (),
        replay_from: dict[int, int] | None = None,
    ) -> list[tuple[int, int, str]]:
        calls.append(([(s.validator_id, s.height) for s in signatures], list(newly_final)))
        replay_points.append(dict(replay_from or {}))
        return []

    async def record_divergence(*args: Any) -> None:
        return None

    async def record_equivocations(conn: object, signatures: list[ledger_pb2.BlockSignature]) -> None:
        calls.append(([("equivocation:" + s.validator_id, s.height) for s in signatures], []))

    monkeypatch.setattr(store, "store_signatures", store_signatures)
    monkeypatch.setattr(store, "record_divergence", record_divergence)
    monkeypatch.setattr(store, "record_equivocations", record_equivocations)
    return calls


# The replay point stored with each store_signatures call of the `writes` fixture.
replay_points: list[dict[int, int]] = []
_offsets = itertools.count()


@dataclass
class Votes:
    """validator-1's finality votes over chains `chains`, and the blocks it handed to publishing."""

    finality: FinalityVotes
    pending: PendingWrites
    settings: LedgerSettings
    finalized: list[BlockKey] = field(default_factory=list)


def _votes(recent_heights: int = 10_000, chains: dict[int, Any] | None = None) -> Votes:
    pending = PendingWrites()
    settings = unit_settings(recent_heights=recent_heights)
    finalized: list[BlockKey] = []
    finality = FinalityVotes(
        settings,
        _FakePool(),  # type: ignore[arg-type]
        chains or {},
        pending,
        finalized.extend,
        asyncio.Event(),
    )
    return Votes(finality, pending, settings, finalized)


def _behind() -> Votes:
    """Votes whose chain 0 is at height 1, keeping votes in memory only up to 5 heights ahead."""
    v = _votes(recent_heights=5, chains={0: SimpleNamespace(height=1)})
    v.finality.replay.start(0, 0)
    return v


def _sig(validator_id: str, height: int, header_hash: bytes = OURS, offset: int | None = None) -> SignatureRecord:
    """A signature read at `offset` of partition 0 (the next offset if None)."""
    signature = ledger_pb2.BlockSignature(chain_id=0, height=height, header_hash=header_hash, validator_id=validator_id)
    return SignatureRecord(signature, 0, next(_offsets) if offset is None else offset)


def _own_signature(votes: Votes, height: int) -> tuple[bytes, bytes]:
    """Our own signature record of a header at `height` (as read from the topic), and the header's hash."""
    header = ledger_pb2.BlockHeader(chain_id=0, height=height).SerializeToString()
    signature = votes.settings.signing_key.sign(header).signature
    return signature_envelope(IDS[0], 0, height, header, signature).SerializeToString(), hashlib.sha256(header).digest()


async def test_signatures_wait_for_the_finality_they_complete(writes: list[Any]) -> None:
    v = _votes()
    v.finality.block_signed((0, 1), OURS)  # our own vote
    await v.finality.on_signatures([_sig(IDS[1], 1)])
    assert writes == [] and v.finality.held_signatures == 1
    await v.finality.on_signatures([_sig(IDS[2], 1)])
    assert writes == [([(IDS[1], 1), (IDS[2], 1)], [(0, 1)])]
    assert v.finality.held_signatures == 0 and v.finality.is_final((0, 1))
    assert v.finalized == [(0, 1)]  # handed to result publishing


async def test_finality_before_our_block_is_stored_waits_for_the_store_but_not_the_results(
    writes: list[Any],
) -> None:
    """Our signature goes out before our block is stored, so a quorum can form while the store runs:
    the block's results are queued at once, its finality is written only after the block is, and a read
    that finds the block not final yet waits for that write."""
    v = _votes()
    key = (0, 1)
    v.finality.block_signed(key, OURS)
    v.pending.signing(key)  # as the coordinator leaves it between sending our signature and the store's end
    votes = asyncio.ensure_future(v.finality.on_signatures([_sig(IDS[1], 1), _sig(IDS[2], 1)]))
    await asyncio.sleep(0.05)
    assert not votes.done() and writes == []
    assert v.finalized == [key]  # results do not wait for either write
    reader = asyncio.ensure_future(v.pending.wait_settled(timeout_s=5))
    await asyncio.sleep(0.05)
    assert not reader.done()
    await v.pending.stored([key])  # the store ends
    await asyncio.wait_for(votes, 5)
    assert writes == [([(IDS[1], 1), (IDS[2], 1)], [key])]
    assert await asyncio.wait_for(reader, 5) is True
    assert await v.pending.wait_settled() is False  # nothing pending: no wait


async def test_a_read_waits_for_a_pending_finality_write_only_so_long() -> None:
    pending = PendingWrites()
    pending.deciding_final([(0, 7)])  # a write that does not end: the read gives up and answers
    assert await asyncio.wait_for(pending.wait_settled(timeout_s=0.2), 5) is True


async def test_a_block_signed_twice_before_its_store_is_a_broken_invariant() -> None:
    pending = PendingWrites()
    pending.signing((0, 1))
    with pytest.raises(InvariantViolation):
        pending.signing((0, 1))


async def test_a_block_held_never_changes_its_header() -> None:
    v = _votes()
    v.finality.block_signed((0, 1), OURS)
    v.finality.block_signed((0, 1), OURS)  # the same header again changes nothing
    with pytest.raises(InvariantViolation, match="changed"):
        v.finality.block_signed((0, 1), THEIRS)
    assert v.finality.header_hash((0, 1)) == OURS


async def test_late_signatures_are_batched_or_written_when_the_topic_is_quiet(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finality_module, "LATE_SIGNATURES_BATCH", 2)
    v = _votes()
    for height in (1, 2, 3):
        v.finality.block_signed((0, height), OURS)
        await v.finality.on_signatures([_sig(i, height) for i in IDS[1:3]])
    writes.clear()
    await v.finality.on_signatures([_sig(IDS[3], 1)])
    assert writes == []  # after finality, nothing to finalize: rides along later
    await v.finality.on_signatures([_sig(IDS[3], 2)])
    assert writes == [([(IDS[3], 1), (IDS[3], 2)], [])]  # a batch is full
    await v.finality.on_signatures([_sig(IDS[3], 3)])
    await v.finality.on_signatures([])  # an empty fetch: the topic is quiet
    assert writes[-1] == ([(IDS[3], 3)], []) and v.finality.late_signatures == 0


async def test_a_divergent_signature_is_written_at_once(writes: list[Any]) -> None:
    v = _votes()
    v.finality.block_signed((0, 1), OURS)
    await v.finality.on_signatures([_sig(IDS[1], 1, THEIRS)])
    assert writes == [([(IDS[1], 1)], [])]


async def test_no_more_than_the_limit_are_held(writes: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # A validator far behind sees signatures of blocks it has not cut yet: they cannot wait for finality.
    monkeypatch.setattr(finality_module, "HELD_SIGNATURES_LIMIT", 3)
    v = _votes()
    await v.finality.on_signatures([_sig(IDS[1], h) for h in (1, 2, 3)])
    assert writes == [] and v.finality.held_signatures == 3
    await v.finality.on_signatures([_sig(IDS[1], 4)])
    assert writes == [([(IDS[1], h) for h in (1, 2, 3, 4)], [])]
    assert v.finality.held_signatures == 0


async def test_a_second_header_signed_for_a_height_is_kept_as_evidence(writes: list[Any]) -> None:
    """The validator's first vote stands; the second, different signed header is stored, not dropped."""
    v = _votes()
    v.finality.block_signed((0, 1), OURS)
    await v.finality.on_signatures([_sig(IDS[1], 1)])
    await v.finality.on_signatures([_sig(IDS[1], 1, THEIRS)])
    assert writes == [([("equivocation:" + IDS[1], 1)], [])]
    assert v.finality.votes((0, 1))[IDS[1]] == OURS
    await v.finality.on_signatures([_sig(IDS[1], 1)])  # a re-delivery of the first is no equivocation
    assert len(writes) == 1


async def _waits_forever(name: str, cancelled: list[str]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def test_a_failed_loop_stops_the_validator() -> None:
    """A loop that dies (here the signatures loop, on an error it could not ride out) ends the run with
    that error instead of leaving the validator up without finality; the others are cancelled."""
    cancelled: list[str] = []

    async def broken() -> None:
        raise ConnectionError("database connection lost")

    loops = [_waits_forever(name, cancelled) for name in ("transactions", "results", "markers")]
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(run_loops([loops[0], broken(), *loops[1:]], asyncio.Event()), timeout=5)
    assert sorted(cancelled) == ["markers", "results", "transactions"]


async def test_a_loop_that_ends_unstopped_is_a_defect() -> None:
    cancelled: list[str] = []

    async def ends() -> None:
        return None

    with pytest.raises(RuntimeError, match="ended before"):
        await asyncio.wait_for(run_loops([_waits_forever("transactions", cancelled), ends()], asyncio.Event()), 5)
    assert cancelled == ["transactions"]


async def _store_block(v: Votes, height: int, final: bool = True) -> None:
    """Our block at `height` of chain 0 signed and stored, then made final by two other votes."""
    v.finality.block_signed((0, height), OURS)
    await v.finality.blocks_stored([(0, height)], {0: height}, [])
    if final:
        await v.finality.on_signatures([_sig(IDS[1], height), _sig(IDS[2], height)])


async def test_blocks_far_below_the_tip_are_forgotten_unless_not_final(writes: list[Any]) -> None:
    v = _votes(recent_heights=3)
    for height in range(1, 9):
        await _store_block(v, height, final=height != 2)
    # Heights 6, 7, 8 are the recent ones; 2 is not final yet: kept.
    assert [h for h in range(1, 9) if v.finality.header_hash((0, h))] == [2, 6, 7, 8]
    assert [h for h in range(1, 9) if v.finality.is_final((0, h))] == [6, 7, 8]
    assert [h for h in range(1, 9) if v.finality.votes((0, h))] == [2, 6, 7, 8]
    assert v.finality.is_forgotten((0, 5)) and not v.finality.is_forgotten((0, 2))
    assert not v.finality.is_forgotten((0, 6))
    await _store_block(v, 9, final=False)
    assert [h for h in range(1, 10) if v.finality.is_final((0, h))] == [7, 8]
    assert v.finality.is_forgotten((0, 6)) and not v.finality.is_forgotten((0, 7))


async def test_a_signature_of_a_forgotten_block_is_checked_against_the_stored_header(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = {(0, 1): OURS, (0, 2): OURS}
    reported: list[tuple[Any, ...]] = []

    async def stored_header_hashes(conn: object, keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return {key: stored[key] for key in keys if key in stored}

    async def record_divergence(conn: object, *args: Any) -> None:
        reported.append(args)

    monkeypatch.setattr(store, "stored_header_hashes", stored_header_hashes)
    monkeypatch.setattr(store, "record_divergence", record_divergence)
    v = _votes(recent_heights=3)
    for height in range(1, 6):  # 1 and 2 final and below the recent heights 3, 4, 5
        await _store_block(v, height, final=height <= 2)
    assert v.finality.is_forgotten((0, 2)) and not v.finality.is_forgotten((0, 3))
    writes.clear()
    await v.finality.on_signatures([_sig(IDS[3], 1), _sig(IDS[3], 2, THEIRS), _sig(IDS[1], 3)])
    # The two forgotten blocks' signatures are stored at once, the diverging one reported; no vote is
    # kept for them. The recent block's signature is a vote, held for the finality it may complete.
    assert writes[0] == ([(IDS[3], 1), (IDS[3], 2)], [])
    assert reported == [(0, 2, IDS[3], THEIRS, OURS)]
    assert v.finality.votes((0, 1)) == {} and v.finality.votes((0, 2)) == {}
    assert v.finality.votes((0, 3)) == {IDS[0]: OURS, IDS[1]: OURS}


async def test_the_replay_point_stays_at_votes_of_blocks_not_final(writes: list[Any]) -> None:
    v = _votes()
    v.finality.replay.start(0, 10)
    v.finality.block_signed((0, 1), OURS)
    v.finality.block_signed((0, 2), OURS)
    await v.finality.on_signatures([_sig(IDS[1], 1, offset=10), _sig(IDS[1], 2, offset=11)], read={0: 12})
    assert writes == [] and v.finality.replay.positions() == {0: 10}
    await v.finality.on_signatures([_sig(IDS[2], 1, offset=12)], read={0: 13})
    # Block 1 is final and stored with its votes; block 2's vote at offset 11 must be read again.
    assert writes == [([(IDS[1], 1), (IDS[2], 1)], [(0, 1)])]
    assert replay_points == [{0: 11}] and v.finality.replay.positions() == {0: 11}
    await v.finality.on_signatures([_sig(IDS[2], 2, offset=13)], read={0: 14})
    assert replay_points[-1] == {0: 14}


async def test_late_signatures_hold_the_replay_point_until_written(writes: list[Any]) -> None:
    v = _votes()
    v.finality.replay.start(0, 0)
    v.finality.block_signed((0, 1), OURS)
    await v.finality.on_signatures([_sig(i, 1, offset=n) for n, i in enumerate(IDS[1:3])], read={0: 2})
    await v.finality.on_signatures([_sig(IDS[3], 1, offset=2)], read={0: 3})
    assert v.finality.replay.positions() == {0: 2}  # the fourth signature is not stored yet
    await v.finality.on_signatures([])  # quiet: it is written, with the point past it
    assert writes[-1] == ([(IDS[3], 1)], []) and replay_points[-1] == {0: 3}
    assert v.finality.replay.positions() == {0: 3}


async def test_our_own_signature_of_a_block_not_stored_holds_the_replay_point(writes: list[Any]) -> None:
    v = _votes()
    v.finality.replay.start(0, 0)
    v.finality.replayed.set()
    raw, header_hash = _own_signature(v, 1)
    v.finality.block_signed((0, 1), header_hash)
    v.pending.signing((0, 1))
    v.finality.note_own_signature(raw, 0, 5)
    v.finality.replay.advance(0, 6)
    assert v.finality.replay.positions() == {0: 5}
    await v.pending.stored([(0, 1)])
    await v.finality.blocks_stored([(0, 1)], {0: 1}, [])
    await v.finality.on_signatures([_sig(IDS[1], 1, header_hash, 6), _sig(IDS[2], 1, header_hash, 7)], read={0: 8})
    assert v.finality.is_final((0, 1)) and replay_points[-1] == {0: 8}


async def test_replaying_our_own_signature_of_a_block_we_lost_is_remembered_and_held() -> None:
    v = _votes()
    v.finality.replay.start(0, 0)
    raw, header_hash = _own_signature(v, 4)
    v.finality.note_own_signature(raw, 0, 2)
    v.finality.replay.advance(0, 3)
    assert v.finality.signed_before((0, 4)) == header_hash
    assert v.finality.replay.positions() == {0: 2}
    header = ledger_pb2.BlockHeader(chain_id=0, height=4).SerializeToString()
    forged = signature_envelope(IDS[0], 0, 5, header, b"\x00" * 64).SerializeToString()
    v.finality.note_own_signature(forged, 0, 3)
    assert v.finality.signed_before((0, 5)) is None  # not verified: not remembered
    with pytest.raises(store.HeaderConflict, match="refusing to sign a second one"):
        await v.finality.check_first_headers([((0, 4), b"\x05" * 32)])


async def test_votes_far_ahead_are_stored_at_once_and_read_back_when_the_block_is_cut(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v = _behind()
    await v.finality.on_signatures([_sig(IDS[1], 10, offset=0), _sig(IDS[2], 10, offset=1)], read={0: 2})
    # Five or more heights ahead of the chain: stored, nothing kept in memory, nothing to read again.
    assert writes == [([(IDS[1], 10), (IDS[2], 10)], [])]
    assert v.finality.votes((0, 10)) == {} and replay_points[-1] == {0: 2}
    asked: list[list[tuple[int, int]]] = []

    async def stored_votes(conn: object, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, bytes]]:
        asked.append(list(keys))
        return {(0, 10): {IDS[1]: OURS, IDS[2]: OURS}} if (0, 10) in keys else {}

    monkeypatch.setattr(store, "stored_votes", stored_votes)
    await v.finality.check_first_headers([((0, 9), OURS), ((0, 10), OURS), ((0, 11), OURS)])
    assert asked == [[(0, 9), (0, 10)]]  # nothing was stored above height 10
    assert v.finality.votes((0, 10)) == {IDS[1]: OURS, IDS[2]: OURS}
    await v.finality.check_first_headers([((0, 11), OURS)])
    assert len(asked) == 1  # no query for blocks no vote was stored ahead of


async def test_votes_stored_ahead_of_a_block_cut_meanwhile_are_counted(writes: list[Any]) -> None:
    v = _behind()
    v.finality.block_signed((0, 10), OURS)  # cut while the votes were being written
    await v.finality.on_signatures([_sig(IDS[1], 10), _sig(IDS[2], 10), _sig(IDS[3], 10, THEIRS)])
    assert writes[0] == ([(IDS[1], 10), (IDS[2], 10), (IDS[3], 10)], [])
    assert writes[1] == ([], [(0, 10)])  # final with the two votes just stored
    assert v.finality.is_final((0, 10))


async def test_our_own_signature_far_ahead_is_stored_and_refuses_another_header_when_cut(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v = _behind()
    raw, header_hash = _own_signature(v, 9)
    v.finality.note_own_signature(raw, 0, 0)  # read while the topic is replayed at start
    assert v.finality.signed_before((0, 9)) is None  # not kept in memory...
    await v.finality.on_signatures([], read={0: 1})
    assert writes == [([(IDS[0], 9)], [])] and replay_points[-1] == {0: 1}  # ...but stored

    async def stored_votes(conn: object, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, bytes]]:
        return {(0, 9): {IDS[0]: header_hash}}

    monkeypatch.setattr(store, "stored_votes", stored_votes)
    await v.finality.check_first_headers([((0, 9), header_hash)])  # the same header may be signed again
    with pytest.raises(store.HeaderConflict, match="refusing to sign a second one"):
        await v.finality.check_first_headers([((0, 9), b"\x05" * 32)])


async def test_two_headers_from_one_validator_far_ahead_in_one_batch_are_evidence(writes: list[Any]) -> None:
    v = _behind()
    await v.finality.on_signatures([_sig(IDS[1], 10), _sig(IDS[1], 10, THEIRS), _sig(IDS[2], 10)])
    # The second header is evidence; the first is stored as the vote (the store finds later ones).
    assert writes == [([("equivocation:" + IDS[1], 10)], []), ([(IDS[1], 10), (IDS[2], 10)], [])]
