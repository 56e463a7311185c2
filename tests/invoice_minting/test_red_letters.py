"""Refunds and merchant requests produce full / partial red letters and the matching ledger transactions."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pytest
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.errors import reason_of
from fapiao_stack.harness import StackUnderTest

from tests.invoice_minting.support import MintingUnderTest, ledger_stand_in, minting_service, person, uscc, wait_until

pytestmark = pytest.mark.integration

ST = invoice_pb2


async def _claim(minting: MintingUnderTest, payment_id: str) -> invoice_pb2.Invoice:
    token = await minting.token("m1", payment_id)
    response = await minting.stub.ClaimInvoice(
        api.ClaimInvoiceRequest(claim_token=token, buyer=person("赵六"), idempotency_key=f"k-{payment_id}")
    )
    return response.invoice


async def _wait_refund_recorded(conn: asyncpg.Connection, payment_id: str, fen: int) -> None:
    deadline = time.monotonic() + 20
    query = "SELECT refunded_fen FROM invoice_minting.claim_offers WHERE payment_id = $1"
    while await conn.fetchval(query, payment_id) != fen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def _red_letter_of(ledger, invoice_id: str, tx_type: int) -> invoice_pb2.InvoiceBody | None:  # type: ignore[no-untyped-def]
    for tx in ledger.transactions:
        if tx.invoice_id == invoice_id and tx.type == tx_type:
            action = tx.cancel if tx_type == ledger_pb2.TRANSACTION_TYPE_CANCEL else tx.partial_red_letter
            return invoice_pb2.InvoiceBody.FromString(action.red_letter_invoice.body)
    return None


async def test_refunds_and_merchant_requests_red_letter_through_the_ledger(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting, ledger_stand_in(minting) as ledger:
        await minting.register_merchant("m1", uscc(9))
        await minting.register_merchant("m2", uscc(10))
        for payment_id in ("A", "B", "C", "D"):
            await minting.pay("m1", payment_id, 1000)
        a, b = await _claim(minting, "A"), await _claim(minting, "B")
        await minting.wait_status(a.body.invoice_id, ST.INVOICE_STATUS_ISSUED)
        await minting.wait_status(b.body.invoice_id, ST.INVOICE_STATUS_ISSUED)

        # Full refund after the claim: CANCEL with a red letter reversing every line.
        await minting.refund("m1", "A", 1000, 1000)
        red = await wait_until(lambda: _red_letter_of(ledger, a.body.invoice_id, ledger_pb2.TRANSACTION_TYPE_CANCEL))
        assert red.kind == ST.INVOICE_KIND_RED_LETTER
        assert (red.total_fen, red.total_tax_fen) == (-a.body.total_fen, -a.body.total_tax_fen)
        assert red.original_invoice_number == a.body.invoice_number and red.red_letter_reason == "SALES_RETURN"
        assert red.verification_qr.split(",")[4] == "-10.00"
        cancelled = await minting.wait_status(a.body.invoice_id, ST.INVOICE_STATUS_CANCELLED)
        assert list(cancelled.red_letter_invoice_numbers) == [red.invoice_number]
        assert cancelled.reimbursable_fen == 0
        await minting.wait_status(red.invoice_id, ST.INVOICE_STATUS_ISSUED)

        # Partial refund after the claim: PARTIAL_RED_LETTER for the refunded amount.
        await minting.refund("m1", "B", 300, 300)
        partial_tx = await wait_until(
            lambda: next(
                (t for t in ledger.transactions if t.type == ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER), None
            )
        )
        assert partial_tx.invoice_id == b.body.invoice_id and partial_tx.partial_red_letter.amount_fen == 300
        partial = await minting.wait_status(b.body.invoice_id, ST.INVOICE_STATUS_PARTIALLY_RED_LETTERED)
        assert partial.reimbursable_fen == 700

        # The merchant's own request: precise rejections, then a cancel of the rest, idempotent.
        def red_letter(merchant: str, amount: int, reason: str, key: str = "r1"):  # type: ignore[no-untyped-def]
            return minting.stub.RedLetterInvoice(
                api.RedLetterInvoiceRequest(
                    merchant_id=merchant,
                    invoice_number=b.body.invoice_number,
                    amount_fen=amount,
                    reason=reason,
                    idempotency_key=key,
                )
            )

        for call, expected in [
            (red_letter("m1", 0, "BECAUSE"), (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REASON")),
            (red_letter("m1", 800, "ISSUE_ERROR"), (grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_EXCEEDS_REMAINING")),
            (red_letter("m2", 0, "ISSUE_ERROR"), (grpc.StatusCode.PERMISSION_DENIED, "NOT_INVOICE_SELLER")),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert (info.value.code(), reason_of(info.value)) == expected
        # Concurrent deliveries of one request (a client retrying while the first is in flight) all get
        # the one red letter.
        done, *again = await asyncio.gather(*(red_letter("m1", 0, "ISSUE_ERROR") for _ in range(4)))
        assert {r.red_letter_invoice.body.invoice_number for r in again} == {
            done.red_letter_invoice.body.invoice_number
        }
        assert done.red_letter_invoice.body.total_fen == -700
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await red_letter("m1", 100, "ISSUE_ERROR")
        assert reason_of(info.value) == "IDEMPOTENCY_CONFLICT"
        final_b = await minting.wait_status(b.body.invoice_id, ST.INVOICE_STATUS_CANCELLED)
        assert len(final_b.red_letter_invoice_numbers) == 2

        conn = await asyncpg.connect(stack.database_url)
        try:
            # Refunds before the claim: partial -> the invoice is issued and reversed in part at once;
            # full -> nothing left to invoice.
            await minting.refund("m1", "C", 200, 200)
            await minting.refund("m1", "D", 1000, 1000)
            await _wait_refund_recorded(conn, "C", 200)
            await _wait_refund_recorded(conn, "D", 1000)
        finally:
            await conn.close()
        c = await _claim(minting, "C")
        assert c.body.total_fen == 1000 and c.reimbursable_fen == 800
        assert len(c.red_letter_invoice_numbers) == 1
        await minting.wait_status(c.body.invoice_id, ST.INVOICE_STATUS_PARTIALLY_RED_LETTERED)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _claim(minting, "D")
        assert (info.value.code(), reason_of(info.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_REFUNDED")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await minting.stub.GetClaimOffer(api.GetClaimOfferRequest(claim_token=await minting.token("m1", "D")))
        assert reason_of(info.value) == "PAYMENT_REFUNDED"

        # Every number of region 44 this year is used exactly once, red letters included.
        listed = await minting.stub.ListInvoices(api.ListInvoicesRequest(merchant_id="m1", page_size=2))
        numbers = [i.body.invoice_number for i in listed.invoices]
        token = listed.next_page_token
        while token:
            page = await minting.stub.ListInvoices(
                api.ListInvoicesRequest(merchant_id="m1", page_size=2, page_token=token)
            )
            numbers += [i.body.invoice_number for i in page.invoices]
            token = page.next_page_token
        assert sorted(int(n[5:]) for n in numbers) == list(range(1, 8))
        assert not ledger.problems


async def test_ledger_rejection_shows_on_the_invoice(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting, ledger_stand_in(minting, accept=False):
        await minting.register_merchant("m1", uscc(11))
        await minting.pay("m1", "P", 1234)
        invoice = await _claim(minting, "P")
        rejected = await minting.wait_status(invoice.body.invoice_id, ST.INVOICE_STATUS_REJECTED)
        assert rejected.rejection_reason == "TEST_REJECTED"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await minting.stub.RedLetterInvoice(
                api.RedLetterInvoiceRequest(
                    merchant_id="m1",
                    invoice_number=invoice.body.invoice_number,
                    reason="ISSUE_ERROR",
                    idempotency_key="x",
                )
            )
        assert reason_of(info.value) == "INVOICE_REJECTED"
