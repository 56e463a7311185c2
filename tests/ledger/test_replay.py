"""The signature topic's replay point: the lowest offset per partition a restarted validator reads again."""

from __future__ import annotations

import tracemalloc

import pytest
from ledger.replay import ReplayPoint

pytestmark = pytest.mark.unit


def test_the_point_is_what_was_read_when_nothing_is_held() -> None:
    point = ReplayPoint()
    point.start(0, 40)
    point.start(1, 0)
    assert point.positions() == {0: 40, 1: 0}
    point.advance(0, 45)
    point.advance(0, 42)  # never moves back
    assert point.positions() == {0: 45, 1: 0}


def test_held_records_hold_the_point_back_until_released() -> None:
    point = ReplayPoint()
    point.start(0, 0)
    point.hold((0, 7), 0, 3)
    point.hold((0, 7), 0, 9)  # a later record of the same block: the first one counts
    point.hold((0, 8), 0, 5)
    point.advance(0, 10)
    assert point.positions() == {0: 3}
    assert point.positions(excluding=[(0, 7)]) == {0: 5}  # as it will be once (0, 7) is stored
    assert point.positions() == {0: 3}  # asking changes nothing
    point.release([(0, 7)])
    assert point.positions() == {0: 5} and not point.held((0, 7)) and point.held((0, 8))
    point.release([(0, 8)])
    assert point.positions() == {0: 10}


def test_partitions_are_independent_and_tokens_need_not_be_blocks() -> None:
    point = ReplayPoint()
    point.start(0, 100)
    point.start(1, 200)
    point.hold(("late", 0), 1, 150)
    point.hold((3, 1), 0, 120)
    point.hold((3, 1), 1, 210)
    point.advance(0, 130)
    point.advance(1, 220)
    assert point.positions() == {0: 120, 1: 150}
    assert point.positions(excluding=[("late", 0), (3, 1)]) == {0: 130, 1: 220}
    point.release([("late", 0)])
    assert point.positions() == {0: 120, 1: 210}


def test_a_token_held_again_after_release_counts_anew() -> None:
    point = ReplayPoint()
    point.start(0, 0)
    point.hold((0, 1), 0, 4)
    point.release([(0, 1)])
    point.hold((0, 1), 0, 6)
    point.advance(0, 8)
    assert point.positions() == {0: 6}


def test_a_token_held_for_long_does_not_keep_released_entries_behind_it() -> None:
    point = ReplayPoint()
    point.start(0, 0)
    point.hold("stuck", 0, 0)  # e.g. a block that never becomes final for this validator
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(1, 20_001):
            point.hold(offset, 0, offset)
            point.release([offset])
        point.advance(0, 20_001)
        assert point.positions() == {0: 0}
        # Keeping an entry per released token would take over 2 MB here.
        assert tracemalloc.get_traced_memory()[0] - before < 500_000
    finally:
        tracemalloc.stop()
    point.release(["stuck"])
    assert point.positions() == {0: 20_001}
