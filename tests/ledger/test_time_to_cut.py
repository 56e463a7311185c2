"""When the designated validator writes a time-to-cut marker, and which settings are accepted."""

from __future__ import annotations

import pytest
from ledger.config import LedgerConfig
from ledger.validator import cut_interval_start, time_to_cut_due

pytestmark = pytest.mark.unit

CUT_S, IDLE_S = 0.050, 0.005


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


@pytest.mark.parametrize(
    ("cut_ms", "idle_ms", "expected"),
    [("50", None, 5), ("3", None, 3), ("50", "0", 0), ("50", "50", 50)],
)
def test_idle_time_setting(monkeypatch: pytest.MonkeyPatch, cut_ms: str, idle_ms: str | None, expected: int) -> None:
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_MS", cut_ms)
    if idle_ms is not None:
        monkeypatch.setenv("FAPIAO_LEDGER_CUT_IDLE_MS", idle_ms)
    assert LedgerConfig.from_env().cut_idle_ms == expected


@pytest.mark.parametrize("idle_ms", ["-1", "51"])
def test_idle_time_outside_zero_to_the_cut_interval_is_refused(monkeypatch: pytest.MonkeyPatch, idle_ms: str) -> None:
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_MS", "50")
    monkeypatch.setenv("FAPIAO_LEDGER_CUT_IDLE_MS", idle_ms)
    with pytest.raises(ValueError, match="FAPIAO_LEDGER_CUT_IDLE_MS"):
        LedgerConfig.from_env()
