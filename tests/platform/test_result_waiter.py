"""Unit tests: which ledger results may decide a LedgerResultWaiter's waiters."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.errors import DeadlineExceeded
from fapiao_runtime.ledger_client import LedgerResultWaiter, result_event_id

pytestmark = pytest.mark.unit


def _record(result: ledger_pb2.TransactionResult, *, verified: bool = True) -> tuple[bytes, bytes]:
    """A record of ledger.results.v1 as a validator publishes it: (key, envelope)."""
    event_id = result_event_id(result.transaction_id) if verified else uuid.uuid4()
    envelope = make_envelope(result, aggregate_id=result.transaction_id, producer="v", event_id=event_id)
    return result.transaction_id.encode(), envelope.SerializeToString()


class _Records:
    """A consumer of ledger.results.v1 on a broker that receives nothing: records come from handle()."""

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[object]]:
        await asyncio.Event().wait()  # until stop() cancels the reading
        return {}


def _waiter() -> LedgerResultWaiter:
    waiter = LedgerResultWaiter("127.0.0.1:1")
    waiter.read(_Records())  # type: ignore[arg-type]
    return waiter


async def test_an_unverified_rejection_decides_nothing_and_explains_a_time_out() -> None:
    waiter = _waiter()
    tx_id, invoice_id = str(uuid.uuid4()), "inv-1"
    pending = asyncio.ensure_future(waiter.wait(tx_id, 0.3, invoice_id))
    await asyncio.sleep(0)
    forged = ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id=invoice_id, rejection_reason="BAD_SIGNATURE")
    waiter.handle(*_record(forged, verified=False))
    with pytest.raises(DeadlineExceeded, match="BAD_SIGNATURE"):
        await pending
    # The genuine result, later, still decides a new wait.
    genuine = ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id=invoice_id, accepted=True)
    waiter.handle(*_record(genuine))
    assert (await waiter.wait(tx_id, 0.3, invoice_id)).accepted
    await waiter.stop()


async def test_a_result_for_another_invoice_with_the_same_id_is_not_this_waiters() -> None:
    """Transaction ids are unique per chain: another chain's transaction may reuse an id."""
    waiter = _waiter()
    tx_id = str(uuid.uuid4())
    mine = asyncio.ensure_future(waiter.wait(tx_id, 2.0, "inv-mine"))
    await asyncio.sleep(0)
    waiter.handle(*_record(ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id="inv-other", accepted=True)))
    await asyncio.sleep(0)
    assert not mine.done()
    waiter.handle(*_record(ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id="inv-mine")))
    result = await mine
    assert result.invoice_id == "inv-mine" and not result.accepted
    await waiter.stop()


async def test_a_waiter_still_reads_a_result_whose_id_was_seen_for_another_invoice() -> None:
    """Copies of a seen result are skipped undecoded, but not while a waiter for that id is unresolved."""
    waiter = _waiter()
    tx_id = str(uuid.uuid4())
    other = ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id="inv-other", accepted=True)
    waiter.handle(*_record(other))  # seen earlier, for another chain's invoice
    assert (await waiter.wait(tx_id, 0.3)).invoice_id == "inv-other"
    mine = asyncio.ensure_future(waiter.wait(tx_id, 2.0, "inv-mine"))
    await asyncio.sleep(0)
    genuine = ledger_pb2.TransactionResult(transaction_id=tx_id, invoice_id="inv-mine", accepted=True)
    waiter.handle(*_record(genuine))
    assert (await mine).invoice_id == "inv-mine"
    await waiter.stop()


async def test_a_wait_before_reading_starts_is_refused() -> None:
    with pytest.raises(RuntimeError, match="start"):
        await LedgerResultWaiter("127.0.0.1:1").wait(str(uuid.uuid4()), 0.1)
