"""The in-process execution benchmark times real blocks: every transaction accepted, or no figure."""

from __future__ import annotations

import dataclasses

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_bench import ledger_execute
from fapiao_runtime.envelope import make_envelope, parse_envelope, unpack

pytestmark = pytest.mark.unit


def test_figures_of_an_accepted_workload() -> None:
    figures = ledger_execute.measure(invoices=40, rounds=1)
    assert figures["ledger_execute_us_per_tx"] > 0
    assert 0 < figures["ledger_execute_signature_share"] <= 1


def test_the_workload_has_exactly_the_invoices_asked_for() -> None:
    work = ledger_execute.workload(7)
    assert len(work.records) == 14  # an ISSUE and a LOCK each
    with pytest.raises(ValueError):
        ledger_execute.workload(0)


def test_a_workload_the_executor_rejects_gives_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ledger_execute.workload

    def with_a_forged_signature(invoices: int) -> ledger_execute.Workload:
        work = original(invoices)
        envelope = parse_envelope(work.records[0])
        record = unpack(envelope, ledger_pb2.LedgerRecord)
        record.transaction.signature.signature = bytes(64)
        forged = make_envelope(record, aggregate_id=envelope.aggregate_id, producer="bench").SerializeToString()
        return dataclasses.replace(work, records=[forged, *work.records[1:]])

    monkeypatch.setattr(ledger_execute, "workload", with_a_forged_signature)
    with pytest.raises(AssertionError, match="accepted"):
        ledger_execute.measure(invoices=10, rounds=1)
