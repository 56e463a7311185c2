"""When the designated validator writes a time-to-cut marker, and which settings are accepted."""

from __future__ import annotations

import pytest
from ledger.config import LedgerConfig
from ledger.validator import time_to_cut_due

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
