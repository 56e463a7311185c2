"""The validator's metrics: a stored block counts its transactions, rejections by RejectionReason name."""

from __future__ import annotations

import pytest
from fapiao_stack.devnet import BUYER_TAX_ID, T, issue, reimburse
from ledger.metrics import count_block
from prometheus_client import REGISTRY

from tests.ledger.test_state_machine import ISSUER, REIMBURSER, Feeder, iid, new_chain

pytestmark = pytest.mark.unit


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_stored_block_counts_its_rejections_by_reason() -> None:
    feed = Feeder(new_chain(chain_id=0))
    invoice = iid(901)
    feed(issue(ISSUER, invoice, "26440000000000000901", 10_000, buyer=BUYER_TAX_ID))
    feed(issue(ISSUER, invoice, "26440000000000000901"))  # ALREADY_ISSUED
    feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, invoice, BUYER_TAX_ID))
    feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, invoice, BUYER_TAX_ID))  # ALREADY_LOCKED
    feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_CLOSE, iid(902), BUYER_TAX_ID))  # UNKNOWN_INVOICE
    block = feed.cut(1)
    assert block is not None and len(block.outcomes) == 5
    before = {
        reason: _sample("fapiao_ledger_rejections_total", reason=f"REJECTION_REASON_{reason}")
        for reason in ("ALREADY_ISSUED", "ALREADY_LOCKED", "UNKNOWN_INVOICE")
    }
    accepted, rejected = (_sample("fapiao_ledger_transactions_total", accepted=a) for a in ("true", "false"))
    count_block(block.chain_id, block.height, block.outcomes)
    for reason, count in before.items():
        assert _sample("fapiao_ledger_rejections_total", reason=f"REJECTION_REASON_{reason}") == count + 1
    assert _sample("fapiao_ledger_transactions_total", accepted="true") == accepted + 2
    assert _sample("fapiao_ledger_transactions_total", accepted="false") == rejected + 3
    assert _sample("fapiao_ledger_height", chain="0") == 1
