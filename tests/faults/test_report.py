"""The run's outputs from a synthetic history: summary.json's figures, the table, the timeline PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fapiao_faults.checker import FIGURES, Observations, check
from fapiao_faults.history import FAIL, OK, UNKNOWN, Op
from fapiao_faults.nemesis import Fault
from fapiao_faults.report import summary, table, timeline, write_summary

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def _history() -> list[Op]:
    key = {"merchant_id": "1900000001", "transaction_id": "t", "out_trade_no": "o"}
    return [
        Op("pay_grpc", key, T0 + 1, T0 + 1.2, UNKNOWN, "UNAVAILABLE"),
        Op("pay_grpc", key, T0 + 3, T0 + 3.1, OK, "OK", result={"payment_id": "p"}),
        Op("lock", {"invoice_id": "i", "org": "a"}, T0 + 5, T0 + 5.5, FAIL, "FAILED_PRECONDITION"),
    ]


def _faults() -> list[Fault]:
    injected = Fault("kill_broker", "kafka", 2.0, 3.0, start=T0 + 2, end=T0 + 9, injected=True)
    skipped = Fault("isolate_host", "any", 10.0, 5.0, start=T0 + 10, end=T0 + 10, note="one host")
    return [injected, skipped]


def test_summary_holds_every_figure(tmp_path: Path) -> None:
    seen = Observations(payments={("1900000001", "t"): ["p"]}, payments_per_order={"o": 1}, offers={"p": 1})
    verdict = check(_history(), seen)
    data = summary(seed=7, system="single-host", system_note="no cluster", settings={"rate": 1.0}, started=T0,
                   ended=T0 + 20, faults=_faults(), history=_history(), verdict=verdict)  # fmt: skip
    write_summary(tmp_path / "summary.json", data)
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["faults_by_kind"] == {"kill_broker": 1} and again["faults_injected"] == 1
    assert again["faults_skipped"] == [{"kind": "isolate_host", "target": "any", "why": "one host"}]
    assert again["operations_by_outcome"] == {OK: 1, FAIL: 1, UNKNOWN: 1}
    assert again["operations_by_kind"]["pay_grpc"] == {OK: 1, FAIL: 0, UNKNOWN: 1}
    # What clients got while the broker was down (calls started in its window only).
    assert again["codes_during_faults"] == {"kill_broker": {"OK": 1, "FAILED_PRECONDITION": 1}}
    assert set(again["checks"]) == set(FIGURES) and again["passed"] is True
    text = table(again)
    assert "seed 7" in text and "PASSED" in text and "kill_broker" in text


def test_timeline_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    timeline(path, _history(), _faults(), T0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
