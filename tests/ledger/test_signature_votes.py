"""How a validator stores other validators' signatures (unit tests with a fake store, no broker).

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
from types import SimpleNamespace
from typing import Any

import pytest
from fapiao.ledger.v1 import ledger_pb2
from ledger import store
from ledger import validator as validator_module
from ledger.records import signature_envelope
from ledger.validator import SignatureRecord, Validator

from tests.ledger.support import IDS, unit_validator

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


def _validator(recent_heights: int = 10_000) -> Validator:
    return unit_validator(_FakePool(), recent_heights=recent_heights)


def _behind() -> Validator:
    """A validator whose chain 0 is at height 1, keeping votes in memory only up to 5 heights ahead."""
    v = _validator(recent_heights=5)
    v.chains[0] = SimpleNamespace(height=1)  # type: ignore[assignment]
    v.replay.start(0, 0)
    return v


def _sig(validator_id: str, height: int, header_hash: bytes = OURS, offset: int | None = None) -> SignatureRecord:
    """A signature read at `offset` of partition 0 (the next offset if None)."""
    signature = ledger_pb2.BlockSignature(chain_id=0, height=height, header_hash=header_hash, validator_id=validator_id)
    return SignatureRecord(signature, 0, next(_offsets) if offset is None else offset)


async def test_signatures_wait_for_the_finality_they_complete(writes: list[Any]) -> None:
    v = _validator()
    v.own_hashes[(0, 1)] = OURS
    await v._on_signatures([_sig(IDS[0], 1), _sig(IDS[1], 1)])
    assert writes == [] and v._held == 2
    await v._on_signatures([_sig(IDS[2], 1)])
    assert writes == [([(IDS[0], 1), (IDS[1], 1), (IDS[2], 1)], [(0, 1)])]
    assert v.held_signatures == {} and v._held == 0
    assert v.publish_queue.get_nowait() == (0, 1)


async def test_finality_before_our_block_is_stored_waits_for_the_store_but_not_the_results(
    writes: list[Any],
) -> None:
    """Our signature goes out before our block is stored, so a quorum can form while the store runs:
    the block's results are queued at once, its finality is written only after the block is, and a read
    that finds the block not final yet waits for that write."""
    v = _validator()
    key = (0, 1)
    v.own_hashes[key] = OURS
    v.votes[key] = {IDS[0]: OURS}
    v._unstored.add(key)  # as `_commit` leaves it between sending our signature and the store's end
    votes = asyncio.ensure_future(v._on_signatures([_sig(IDS[1], 1), _sig(IDS[2], 1)]))
    await asyncio.sleep(0.05)
    assert not votes.done() and writes == []
    assert v.publish_queue.get_nowait() == key  # results do not wait for either write
    reader = asyncio.ensure_future(v.wait_pending_writes(timeout_s=5))
    await asyncio.sleep(0.05)
    assert not reader.done()
    async with v._stored:  # the store ends
        v._unstored.discard(key)
        v._stored.notify_all()
    await asyncio.wait_for(votes, 5)
    assert writes == [([(IDS[1], 1), (IDS[2], 1)], [key])]
    assert await asyncio.wait_for(reader, 5) is True
    assert await v.wait_pending_writes() is False  # nothing pending: no wait


async def test_a_read_waits_for_a_pending_finality_write_only_so_long() -> None:
    v = _validator()
    v._unwritten_final.add((0, 7))  # a write that does not end: the read gives up and answers
    assert await asyncio.wait_for(v.wait_pending_writes(timeout_s=0.2), 5) is True


async def test_late_signatures_are_batched_or_written_when_the_topic_is_quiet(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validator_module, "LATE_SIGNATURES_BATCH", 2)
    v = _validator()
    for height in (1, 2, 3):
        v.own_hashes[(0, height)] = OURS
        await v._on_signatures([_sig(i, height) for i in IDS[:3]])
    writes.clear()
    await v._on_signatures([_sig(IDS[3], 1)])
    assert writes == []  # after finality, nothing to finalize: rides along later
    await v._on_signatures([_sig(IDS[3], 2)])
    assert writes == [([(IDS[3], 1), (IDS[3], 2)], [])]  # a batch is full
    await v._on_signatures([_sig(IDS[3], 3)])
    await v._on_signatures([])  # an empty fetch: the topic is quiet
    assert writes[-1] == ([(IDS[3], 3)], []) and v.late_signatures == []


async def test_a_divergent_signature_is_written_at_once(writes: list[Any]) -> None:
    v = _validator()
    v.own_hashes[(0, 1)] = OURS
    await v._on_signatures([_sig(IDS[1], 1, THEIRS)])
    assert writes == [([(IDS[1], 1)], [])]


async def test_no_more_than_the_limit_are_held(writes: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # A validator far behind sees signatures of blocks it has not cut yet: they cannot wait for finality.
    monkeypatch.setattr(validator_module, "HELD_SIGNATURES_LIMIT", 3)
    v = _validator()
    await v._on_signatures([_sig(IDS[1], h) for h in (1, 2, 3)])
    assert writes == [] and v._held == 3
    await v._on_signatures([_sig(IDS[1], 4)])
    assert writes == [([(IDS[1], h) for h in (1, 2, 3, 4)], [])]
    assert v.held_signatures == {} and v._held == 0


async def test_a_second_header_signed_for_a_height_is_kept_as_evidence(writes: list[Any]) -> None:
    """The validator's first vote stands; the second, different signed header is stored, not dropped."""
    v = _validator()
    v.own_hashes[(0, 1)] = OURS
    await v._on_signatures([_sig(IDS[1], 1)])
    await v._on_signatures([_sig(IDS[1], 1, THEIRS)])
    assert writes == [([("equivocation:" + IDS[1], 1)], [])]
    assert v.votes[(0, 1)][IDS[1]] == OURS
    await v._on_signatures([_sig(IDS[1], 1)])  # a re-delivery of the first is no equivocation
    assert len(writes) == 1


async def test_a_failed_loop_stops_the_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that dies (here the signatures loop, on an error it could not ride out) ends `run` with
    that error instead of leaving the validator up without finality; the others are cancelled."""

    class _Consumer:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

        def assign(self, partitions: object) -> None:
            return None

        def seek(self, partition: object, offset: int) -> None:
            return None

    v = _validator()
    stop = asyncio.Event()
    cancelled: list[str] = []

    async def waits_forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def broken(stop: asyncio.Event) -> None:
        raise ConnectionError("database connection lost")

    async def partitions(consumer: object, topic: str) -> list[int]:
        return [0]

    async def load(partitions: list[int]) -> dict[int, int]:
        return {0: 0}

    monkeypatch.setattr(validator_module, "AIOKafkaConsumer", _Consumer)
    monkeypatch.setattr(v, "_partitions", partitions)
    monkeypatch.setattr(v, "_load", load)
    monkeypatch.setattr(v, "_transactions_loop", lambda consumer, stop, tps: waits_forever("transactions"))
    monkeypatch.setattr(v, "_signatures_loop", broken)
    monkeypatch.setattr(v, "_results_loop", lambda stop: waits_forever("results"))
    monkeypatch.setattr(v, "_markers_loop", lambda stop: waits_forever("markers"))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(v.run(stop), timeout=5)
    assert sorted(cancelled) == ["markers", "results", "transactions"]


async def test_blocks_far_below_the_tip_are_forgotten_unless_not_final(writes: list[Any]) -> None:
    v = _validator(recent_heights=3)
    for height in range(1, 9):
        v.own_hashes[(0, height)] = OURS
        v.votes[(0, height)] = {IDS[0]: OURS}
        if height != 2:
            v.final.add((0, height))
    v._forget_old({0: 8})  # heights 6, 7, 8 are the recent ones
    assert sorted(h for _, h in v.own_hashes) == [2, 6, 7, 8]  # 2 is not final yet: kept
    assert sorted(h for _, h in v.final) == [6, 7, 8] and sorted(h for _, h in v.votes) == [2, 6, 7, 8]
    assert v._is_forgotten((0, 5)) and not v._is_forgotten((0, 2)) and not v._is_forgotten((0, 6))
    v._forget_old({0: 9})
    assert sorted(h for _, h in v.final) == [7, 8] and v.forgotten_below[0] == 7


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
    v = _validator(recent_heights=3)
    v.forgotten_below[0] = 3
    v.own_hashes[(0, 3)] = OURS
    await v._on_signatures([_sig(IDS[1], 1), _sig(IDS[2], 2, THEIRS), _sig(IDS[1], 3)])
    # The two forgotten blocks' signatures are stored at once, the diverging one reported; no vote is
    # kept for them. The recent block's signature is a vote, held for the finality it may complete.
    assert writes[0] == ([(IDS[1], 1), (IDS[2], 2)], [])
    assert reported == [(0, 2, IDS[2], THEIRS, OURS)]
    assert (0, 1) not in v.votes and (0, 2) not in v.votes and v.votes[(0, 3)] == {IDS[1]: OURS}


async def test_the_replay_point_stays_at_votes_of_blocks_not_final(writes: list[Any]) -> None:
    v = _validator()
    v.replay.start(0, 10)
    v.own_hashes[(0, 1)] = OURS
    v.own_hashes[(0, 2)] = OURS
    await v._on_signatures([_sig(IDS[0], 1, offset=10), _sig(IDS[1], 1, offset=11)], read={0: 12})
    await v._on_signatures([_sig(IDS[1], 2, offset=12)], read={0: 13})
    assert writes == [] and v.replay.positions() == {0: 10}
    await v._on_signatures([_sig(IDS[2], 1, offset=13)], read={0: 14})
    # Block 1 is final and stored with its votes; block 2's vote at offset 12 must be read again.
    assert writes == [([(IDS[0], 1), (IDS[1], 1), (IDS[2], 1)], [(0, 1)])]
    assert replay_points == [{0: 12}] and v.replay.positions() == {0: 12}
    await v._on_signatures([_sig(IDS[0], 2, offset=14), _sig(IDS[2], 2, offset=15)], read={0: 16})
    assert replay_points[-1] == {0: 16}


async def test_late_signatures_hold_the_replay_point_until_written(writes: list[Any]) -> None:
    v = _validator()
    v.replay.start(0, 0)
    v.own_hashes[(0, 1)] = OURS
    await v._on_signatures([_sig(i, 1, offset=n) for n, i in enumerate(IDS[:3])], read={0: 3})
    await v._on_signatures([_sig(IDS[3], 1, offset=3)], read={0: 4})
    assert v.replay.positions() == {0: 3}  # the fourth signature is not stored yet
    await v._on_signatures([])  # quiet: it is written, with the point past it
    assert writes[-1] == ([(IDS[3], 1)], []) and replay_points[-1] == {0: 4}
    assert v.replay.positions() == {0: 4}


async def test_our_own_signature_of_a_block_not_stored_holds_the_replay_point(writes: list[Any]) -> None:
    v = _validator()
    v.replay.start(0, 0)
    v.signatures_replayed.set()
    header = ledger_pb2.BlockHeader(chain_id=0, height=1).SerializeToString()
    raw = signature_envelope(IDS[0], 0, 1, header, v.config.signing_key.sign(header).signature).SerializeToString()
    v._unstored.add((0, 1))
    v._note_own_signature(raw, 0, 5)
    v.replay.advance(0, 6)
    assert v.replay.positions() == {0: 5}
    v._unstored.clear()
    v.own_hashes[(0, 1)] = OURS
    v.votes[(0, 1)] = {IDS[0]: OURS}
    await v._on_signatures([_sig(IDS[1], 1, offset=6), _sig(IDS[2], 1, offset=7)], read={0: 8})
    assert replay_points[-1] == {0: 8}


async def test_replaying_our_own_signature_of_a_block_we_lost_is_remembered_and_held() -> None:
    v = _validator()
    v.replay.start(0, 0)
    header = ledger_pb2.BlockHeader(chain_id=0, height=4).SerializeToString()
    raw = signature_envelope(IDS[0], 0, 4, header, v.config.signing_key.sign(header).signature).SerializeToString()
    v._note_own_signature(raw, 0, 2)
    v.replay.advance(0, 3)
    assert v.signed_before == {(0, 4): hashlib.sha256(header).digest()}
    assert v.replay.positions() == {0: 2}
    forged = signature_envelope(IDS[0], 0, 5, header, b"\x00" * 64).SerializeToString()
    v._note_own_signature(forged, 0, 3)
    assert (0, 5) not in v.signed_before  # not verified: not remembered


async def test_votes_far_ahead_are_stored_at_once_and_read_back_when_the_block_is_cut(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v = _behind()
    await v._on_signatures([_sig(IDS[1], 10, offset=0), _sig(IDS[2], 10, offset=1)], read={0: 2})
    # Five or more heights ahead of the chain: stored, nothing kept in memory, nothing to read again.
    assert writes == [([(IDS[1], 10), (IDS[2], 10)], [])]
    assert (0, 10) not in v.votes and replay_points[-1] == {0: 2}
    asked: list[list[tuple[int, int]]] = []

    async def stored_votes(conn: object, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, bytes]]:
        asked.append(list(keys))
        return {(0, 10): {IDS[1]: OURS, IDS[2]: OURS}} if (0, 10) in keys else {}

    monkeypatch.setattr(store, "stored_votes", stored_votes)
    await v._load_stored_votes([(0, 9), (0, 10), (0, 11)])
    assert asked == [[(0, 9), (0, 10)]]  # nothing was stored above height 10
    assert v.votes[(0, 10)] == {IDS[1]: OURS, IDS[2]: OURS}
    await v._load_stored_votes([(0, 11)])
    assert len(asked) == 1  # no query for blocks no vote was stored ahead of


async def test_votes_stored_ahead_of_a_block_cut_meanwhile_are_counted(writes: list[Any]) -> None:
    v = _behind()
    v.own_hashes[(0, 10)] = OURS  # cut while the votes were being written
    v.votes[(0, 10)] = {IDS[0]: OURS}
    await v._on_signatures([_sig(IDS[1], 10), _sig(IDS[2], 10), _sig(IDS[3], 10, THEIRS)])
    assert writes[0] == ([(IDS[1], 10), (IDS[2], 10), (IDS[3], 10)], [])
    assert writes[1] == ([], [(0, 10)])  # final with the two votes just stored
    assert (0, 10) in v.final


async def test_our_own_signature_far_ahead_is_stored_and_refuses_another_header_when_cut(
    writes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    v = _behind()
    header = ledger_pb2.BlockHeader(chain_id=0, height=9).SerializeToString()
    raw = signature_envelope(IDS[0], 0, 9, header, v.config.signing_key.sign(header).signature).SerializeToString()
    v._note_own_signature(raw, 0, 0)  # read while the topic is replayed at start
    assert v.signed_before == {}  # not kept in memory...
    await v._on_signatures([], read={0: 1})
    assert writes == [([(IDS[0], 9)], [])] and replay_points[-1] == {0: 1}  # ...but stored

    async def stored_votes(conn: object, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, bytes]]:
        return {(0, 9): {IDS[0]: hashlib.sha256(header).digest()}}

    monkeypatch.setattr(store, "stored_votes", stored_votes)
    other = SimpleNamespace(chain_id=0, height=9, header_hash=b"\x05" * 32)
    with pytest.raises(store.HeaderConflict, match="refusing to sign a second one"):
        await v._commit([other])  # type: ignore[list-item]


async def test_two_headers_from_one_validator_far_ahead_in_one_batch_are_evidence(writes: list[Any]) -> None:
    v = _behind()
    await v._on_signatures([_sig(IDS[1], 10), _sig(IDS[1], 10, THEIRS), _sig(IDS[2], 10)])
    # The second header is evidence; the first is stored as the vote (the store finds later ones).
    assert writes == [([("equivocation:" + IDS[1], 10)], []), ([(IDS[1], 10), (IDS[2], 10)], [])]
