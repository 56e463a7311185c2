"""When the designated validator writes a time-to-cut marker, and which settings are accepted."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import parse_envelope, unpack
from fapiao_stack.devnet import issue
from ledger.records import LogRecord, decode_record, marker_envelope
from ledger.settings import LedgerSettings
from ledger.state_machine import parse_transaction
from ledger.time_cuts import TimeCutter, chains_to_mark, cut_interval_start, time_to_cut_due
from prometheus_client import REGISTRY

from tests.ledger.support import IDS, unit_settings, unit_validator
from tests.ledger.test_state_machine import ISSUER, iid, new_chain

pytestmark = pytest.mark.unit

CUT_S, IDLE_S = 0.050, 0.005


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_chain_never_cut_waits_only_the_idle_time() -> None:
    assert time_to_cut_due(100.0, None, CUT_S, IDLE_S) == pytest.approx(100.005)


def test_a_chain_idle_for_longer_than_the_cut_interval_waits_only_the_idle_time() -> None:
    # Previous cut 2 s before the first pending transaction: light load.
    assert time_to_cut_due(100.0, 98.0, CUT_S, IDLE_S) == pytest.approx(100.005)


def test_under_load_time_cuts_are_spaced_by_the_cut_interval() -> None:
    # A transaction 10 ms after the previous cut (by marker or by size): the next marker is due 50 ms
    # after that cut, not 5 ms after the transaction, so blocks grow with the load.
    assert time_to_cut_due(100.010, 100.0, CUT_S, IDLE_S) == pytest.approx(100.050)
    # Between the two: whichever comes later.
    assert time_to_cut_due(100.048, 100.0, CUT_S, IDLE_S) == pytest.approx(100.053)


def test_the_interval_counts_from_the_send_of_the_marker_that_cut_the_previous_block() -> None:
    # Our marker for height 6 was sent at 100.000 and read back (block 6 cut) at 100.030, late: the
    # marker for height 7 is due 50 ms after the send, not 50 ms after the read.
    start = cut_interval_start(100.030, (6, 100.000), height=7)
    assert start == pytest.approx(100.000)
    assert time_to_cut_due(100.031, start, CUT_S, IDLE_S) == pytest.approx(100.050)
    # Read back later than a whole interval: the next marker waits only the idle time.
    late = cut_interval_start(100.060, (6, 100.000), height=7)
    assert time_to_cut_due(100.061, late, CUT_S, IDLE_S) == pytest.approx(100.066)


def test_the_interval_counts_from_the_cut_when_no_marker_of_ours_made_it() -> None:
    # Our last marker named an older height (block 6 was cut by size, or by another validator's marker).
    assert cut_interval_start(100.030, (5, 99.900), height=7) == pytest.approx(100.030)
    assert cut_interval_start(100.030, None, height=7) == pytest.approx(100.030)
    assert cut_interval_start(None, (6, 100.000), height=7) is None  # never cut: the idle rule applies
    # A block cut by size before our marker for it arrived: the earlier of the two.
    assert cut_interval_start(99.990, (6, 100.000), height=7) == pytest.approx(99.990)


def test_an_idle_time_equal_to_the_cut_interval_is_the_fixed_interval_rule() -> None:
    assert time_to_cut_due(100.0, None, CUT_S, CUT_S) == pytest.approx(100.050)
    assert time_to_cut_due(100.010, 100.0, CUT_S, CUT_S) == pytest.approx(100.060)


def test_nothing_is_marked_before_a_chain_is_due() -> None:
    assert chains_to_mark({0: 100.02, 1: 100.01}, {0, 1}, now=100.0) == []
    assert chains_to_mark({}, set(), now=100.0) == []


def test_a_due_chain_takes_every_unmarked_pending_chain_with_it() -> None:
    # Chain 0 is due; chain 1 has pending transactions but would wait longer on its own; chain 2 was
    # marked at its current height already (its marker is in flight): only 0 and 1 are marked now.
    assert chains_to_mark({0: 99.99, 1: 100.04, 2: 100.5}, {0, 1}, now=100.0) == [0, 1]
    # A chain due again after a long pause (a lost marker) is re-marked on its own.
    assert chains_to_mark({0: 100.02, 2: 99.0}, {0}, now=100.0) == [0, 2]
    # Chains without pending transactions (absent from `due`) are never marked.
    assert chains_to_mark({0: 99.99}, {0, 1}, now=100.0) == [0]


class _Producer:
    def __init__(self) -> None:
        self.markers: list[tuple[int, int, float]] = []

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> Any:
        marker = unpack(parse_envelope(value), ledger_pb2.LedgerRecord).time_to_cut
        self.markers.append((partition, marker.height, time.monotonic()))
        return asyncio.get_running_loop().create_future()


def _cutter(producer: _Producer, chains: dict[int, Any]) -> TimeCutter:
    """validator-1's time cutting (the first by id: the one that cuts on time) over `chains`."""
    return TimeCutter(unit_settings(), producer, "ledger.tx.v1", chains)  # type: ignore[arg-type]


def _take_over(cutter: TimeCutter, writer: str, height: int) -> None:
    """`writer`'s marker for chain 0's current height `height` is read: it writes the time cuts from now on."""
    cutter.on_chain0_marker(ledger_pb2.TimeToCut(height=height), height, writer)
    assert cutter.time_cutter == writer


async def _markers_sent(cutter: TimeCutter, producer: _Producer, count: int, quiet_s: float) -> None:
    """Run the time cutting until `count` markers are sent, then `quiet_s` longer (nothing more is due)."""
    stop = asyncio.Event()
    loop = asyncio.ensure_future(cutter.run(stop))
    try:
        async with asyncio.timeout(5):
            while len(producer.markers) < count:
                await asyncio.sleep(0.005)
        await asyncio.sleep(quiet_s)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=5)


async def test_the_designated_validator_cuts_the_chains_together() -> None:
    producer = _Producer()
    cutter = _cutter(
        producer, {0: SimpleNamespace(has_pending=True, height=7), 1: SimpleNamespace(has_pending=True, height=3)}
    )
    now = time.monotonic()
    # Chain 0 is under load (cut just now: due after cut_ms, 20 ms); chain 1 alone would be due in 80 ms.
    cutter.note_cut(0, at=now)
    cutter.note_pending(0, at=now)
    cutter.note_pending(1, at=now + 0.075)
    on_time = _sample("fapiao_ledger_time_cuts_sent_total", role="time_cutter")
    await _markers_sent(cutter, producer, 2, quiet_s=0.1)  # nothing more: both are marked at their heights
    assert sorted((chain, height) for chain, height, _ in producer.markers) == [(0, 7), (1, 3)]
    sent = [at for _, _, at in producer.markers]
    # Chain 1 went out with chain 0, at chain 0's time, in the same round.
    assert now + 0.015 <= min(sent) and max(sent) < now + 0.075
    assert max(sent) - min(sent) < 0.005
    assert _sample("fapiao_ledger_time_cuts_sent_total", role="time_cutter") == on_time + 2


async def test_the_other_validators_only_stand_in() -> None:
    producer = _Producer()
    cutter = _cutter(producer, {0: SimpleNamespace(has_pending=True, height=7)})
    _take_over(cutter, IDS[1], 7)  # another validator writes the time cuts
    now = time.monotonic()
    cutter.note_pending(0, at=now)
    await _markers_sent(cutter, producer, 1, quiet_s=0)
    assert producer.markers[0][2] - now >= 0.25  # the stand-in wait, max(5 x cut_ms, 250 ms)


async def test_a_validators_marker_for_chain_0s_current_height_takes_over_the_time_cuts() -> None:
    """The first by id writes the time cuts until another validator's marker for chain 0's current
    height is read (it stood in while the first was down or late, and cut a block or only claimed the
    role): every validator reads that in the log, and the new one cuts on time from then on. Markers
    from unknown writers and stale ones (for a height already cut) change nothing."""
    v = unit_validator(None, _Producer())
    assert v.time_cuts.time_cutter == IDS[0] == v.settings.validator_id
    chain = new_chain()

    async def apply(*records: LogRecord) -> int:
        return len(await v.coordination.apply_batch(chain, list(records)))

    def tx(offset: int, n: int) -> LogRecord:
        signed = issue(ISSUER, iid(n), f"2644{n:016d}")
        return LogRecord(offset, iid(n), "tx", tx=parse_transaction(signed))

    def marker(offset: int, writer: str, height: int) -> LogRecord:
        return decode_record(offset, marker_envelope(writer, 0, height).SerializeToString())

    assert marker(0, IDS[2], 1).producer == IDS[2]
    changes = _sample("fapiao_ledger_time_cutter_changes_total")
    assert await apply(tx(10, 1), marker(11, "stranger", 1)) == 1
    assert v.time_cuts.time_cutter == IDS[0]  # not a validator: ignored
    assert await apply(tx(12, 2), marker(13, IDS[2], 2), marker(14, IDS[3], 2)) == 1
    assert v.time_cuts.time_cutter == IDS[2]  # its marker cut block 2; the later one for height 2 is stale
    assert await apply(marker(15, IDS[1], 2)) == 0  # stale: no cut, no change
    assert v.time_cuts.time_cutter == IDS[2]
    # A claim: a marker for the current height with nothing pending cuts nothing, but takes over.
    assert await apply(marker(16, IDS[1], 3)) == 0
    assert v.time_cuts.time_cutter == IDS[1]
    assert await apply(tx(17, 3), marker(18, IDS[3], 3)) == 1
    assert v.time_cuts.time_cutter == IDS[3]
    assert _sample("fapiao_ledger_time_cutter_changes_total") == changes + 3


async def test_another_chains_markers_do_not_move_the_time_cuts() -> None:
    """Chains are not ordered with each other: only chain 0's log decides who writes the time cuts."""
    v = unit_validator(None, _Producer())
    chain = new_chain(chain_id=1)
    signed = issue(ISSUER, iid(1), f"2644{1:016d}")
    records = [
        LogRecord(10, iid(1), "tx", tx=parse_transaction(signed)),
        decode_record(11, marker_envelope(IDS[2], 1, 1).SerializeToString()),
    ]
    assert len(await v.coordination.apply_batch(chain, records)) == 1
    assert v.time_cuts.time_cutter == IDS[0]


async def test_a_stand_in_claims_the_time_cuts_on_an_idle_chain_0_once_per_height() -> None:
    """With the time cutter down and only chain 1 busy, a stand-in marks chain 1 and sends a marker for
    chain 0's current height, which cuts nothing there but makes it the time cutter for everyone. A
    claim it already sent at that height is not repeated with chain 1's next marker (only after the
    re-send time, like any marker)."""
    producer = _Producer()
    chains = {0: SimpleNamespace(has_pending=False, height=4), 1: SimpleNamespace(has_pending=True, height=9)}
    cutter = _cutter(producer, chains)
    _take_over(cutter, IDS[1], 4)
    now = time.monotonic()
    cutter.note_pending(1, at=now)
    stand_ins = _sample("fapiao_ledger_time_cuts_sent_total", role="stand_in")
    await _markers_sent(cutter, producer, 2, quiet_s=0.05)  # nothing more until the markers are read back
    assert sorted((chain, height) for chain, height, _ in producer.markers) == [(0, 4), (1, 9)]
    assert min(at for _, _, at in producer.markers) - now >= 0.25
    # Chain 1's marker cut block 9 and more is pending; chain 0 is still at height 4 (the claim is in flight).
    chains[1].height = 10
    cutter.note_cut(1)
    cutter.note_pending(1)
    await _markers_sent(cutter, producer, 3, quiet_s=0.05)
    assert [(chain, height) for chain, height, _ in producer.markers[2:]] == [(1, 10)]
    assert _sample("fapiao_ledger_time_cuts_sent_total", role="stand_in") == stand_ins + 3


@pytest.mark.parametrize(
    ("cut_ms", "idle_ms", "expected"),
    [("50", None, 5), ("3", None, 3), ("50", "0", 0), ("50", "50", 50)],
)
def test_idle_time_setting(monkeypatch: pytest.MonkeyPatch, cut_ms: str, idle_ms: str | None, expected: int) -> None:
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_MS", cut_ms)
    if idle_ms is not None:
        monkeypatch.setenv("FAPIAO_LEDGER_CUT_IDLE_MS", idle_ms)
    assert LedgerSettings.from_env().cut_idle_ms == expected


@pytest.mark.parametrize("idle_ms", ["-1", "51"])
def test_idle_time_outside_zero_to_the_cut_interval_is_refused(monkeypatch: pytest.MonkeyPatch, idle_ms: str) -> None:
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_MS", "50")
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_IDLE_MS", idle_ms)
    with pytest.raises(ValueError, match="FAPIAO_LEDGER_CUT_IDLE_MS"):
        LedgerSettings.from_env()
