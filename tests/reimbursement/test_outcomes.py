"""Unit test: which results the ledger answers for a transaction id count as that transaction's outcome."""

from __future__ import annotations

import pytest
from fapiao.ledger.v1 import ledger_pb2
from reimbursement.handlers import ask_ledger

pytestmark = pytest.mark.unit


class _Ledger:
    def __init__(self, results: dict[str, ledger_pb2.TransactionResult]) -> None:
        self.results = results

    async def transaction_result(self, transaction_id: str) -> ledger_pb2.TransactionResult | None:
        return self.results.get(transaction_id)


async def test_only_a_verified_outcome_of_our_own_invoice_counts() -> None:
    def result(tx: str, invoice: str, reason: str = "") -> ledger_pb2.TransactionResult:
        return ledger_pb2.TransactionResult(
            transaction_id=tx, invoice_id=invoice, accepted=not reason, rejection_reason=reason
        )

    ledger = _Ledger(
        {
            "t-ok": result("t-ok", "inv-1"),
            "t-locked": result("t-locked", "inv-2", "ALREADY_LOCKED"),
            "t-forged": result("t-forged", "inv-3", "BAD_SIGNATURE"),  # a copied id, never verified
            "t-elsewhere": result("t-elsewhere", "inv-other"),  # the same id on another chain
            "t-again": result("t-again", "inv-5", "DUPLICATE_TRANSACTION"),
        }
    )
    asked = {"t-ok": "inv-1", "t-locked": "inv-2", "t-forged": "inv-3", "t-elsewhere": "inv-4", "t-again": "inv-5"}
    asked["t-unknown"] = "inv-6"
    found = await ask_ledger(ledger, asked)  # type: ignore[arg-type]
    assert sorted(r.transaction_id for r in found) == ["t-locked", "t-ok"]
